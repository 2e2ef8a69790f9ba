import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/fixtures/console-golden.json from the current console classifier")


@pytest.fixture
def results_dir(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    return d


def have_qemu() -> bool:
    return shutil.which("qemu-system-x86_64") is not None


requires_qemu = pytest.mark.skipif(not have_qemu(), reason="qemu-system-x86_64 not installed (make setup)")
