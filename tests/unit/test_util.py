"""harness.util: the leaf of shared helpers (atomic write, sha256, file lock, change identity, process reaping)."""
import ast
import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from harness import util
from harness.vm.l1boot import TCG_BOOT_FLAKE, is_tcg_boot_flake


def test_util_imports_nothing_of_the_project():
    tree = ast.parse(Path(util.__file__).read_text())
    mods = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    mods += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert mods and not [m for m in mods if m == "harness" or m.startswith("harness.")]


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "sub" / "f.json"
    util.atomic_write(p, "one\n")
    util.atomic_write(p, b"two\n")
    assert p.read_text() == "two\n"
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.json"]


def test_two_concurrent_writers_never_leave_a_torn_file(tmp_path):
    p = tmp_path / "f"
    texts = {"a" * 200_000, "b" * 300_000}
    seen: set[str] = set()

    def write(text):
        for _ in range(30):
            util.atomic_write(p, text)

    ts = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in ts:
        t.start()
    while any(t.is_alive() for t in ts):
        if p.exists():
            seen.add(p.read_text())
    for t in ts:
        t.join()
    assert seen <= texts and p.read_text() in texts
    assert [x.name for x in tmp_path.iterdir()] == ["f"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    p = tmp_path / "f"
    util.atomic_write(p, "old")
    with pytest.raises(TypeError):
        util.atomic_write(p, 42)  # type: ignore[arg-type]
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["f"]


def test_sha256_file_alone_and_fed_into_a_hash(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * (3 << 20))
    assert util.sha256_file(p) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()
    h = hashlib.sha256(b"pre")
    assert util.sha256_file(p, h) == ""
    assert h.hexdigest() == hashlib.sha256(b"pre" + b"x" * (3 << 20)).hexdigest()


def test_file_lock_makes_processes_take_turns(tmp_path):
    lock = tmp_path / "l.lock"
    code = ("import sys, time; from pathlib import Path; from harness.util import file_lock\n"
            "with file_lock(Path(sys.argv[1])):\n  print(time.monotonic(), flush=True); time.sleep(0.5)\n"
            "  print(time.monotonic(), flush=True)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    spans = sorted(tuple(map(float, p.communicate(timeout=30)[0].split())) for p in procs)
    assert spans[0][1] <= spans[1][0]  # the second held it only after the first let go


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_change_identity_records_dirty(tmp_path):
    assert util.change_identity(tmp_path) == util.UNKNOWN_COMMIT  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert util.change_identity(tmp_path) == head
    assert util.change_identity(tmp_path, short=True) == _git(tmp_path, "rev-parse", "--short", "HEAD")
    (tmp_path / "untracked.txt").write_text("results are not code\n")
    assert util.change_identity(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert util.change_identity(tmp_path) == head + "-dirty"
    assert util.commit_of(head + "-dirty") == head


def test_kill_tree_reaps_a_child_and_its_grandchild():
    p = subprocess.Popen([sys.executable, "-c",
                          "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
                          "'import time; time.sleep(60)']); print('up', flush=True); time.sleep(60)"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "up"
    family = [psutil.Process(p.pid)] + psutil.Process(p.pid).children(recursive=True)
    assert len(family) == 2
    t = time.monotonic()
    assert util.kill_tree(p.pid) == []
    p.wait(timeout=5)
    assert not [q for q in family if q.is_running() and q.status() != psutil.STATUS_ZOMBIE]
    assert time.monotonic() - t < 5
    assert util.kill_tree(p.pid) == []  # gone: nothing to do, no error


@pytest.mark.parametrize("console, flake", [
    ("Oops: int3 ...\n RIP: sched_clock_cpu+0x1\n", True),
    ("Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n RIP: 0010:sched_clock_idle_wakeup_event+0x5/0x30\n", True),
    ("Oops: general protection fault\n RIP: sched_clock_cpu+0x1\n", False),
    ("Kernel panic - not syncing\n", False),
    ("", False),
])
def test_the_tcg_boot_flake_is_an_int3_oops_at_any_site(console, flake):
    assert is_tcg_boot_flake(console) is flake
    assert all(m in console for m in TCG_BOOT_FLAKE) is flake
