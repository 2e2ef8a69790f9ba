"""ledger.dma_frac: the knob, what it puts on L2's command line and in start-l2.sh's environment, the disk that
start-l2.sh gives L2, L2's init passing it through, the image's virtio_blk module, and the ledger's DMA writes
(the real C binary, run natively against a file)."""
from __future__ import annotations

import lzma
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.config import Scenario, parse_scenario
from harness.errors import InputError
from harness.images.l2 import build_ledger
from harness.oracles import ledger as ledger_oracle
from harness.scenario import l1host
from tests.conftest import REPO
from tests.unit.test_qemu_cmdline import l2_argv

DMA_ARGS = ["-drive", "file=/run/l2-dma.disk,if=none,id=dma0,format=raw,cache=writeback",
            "-device", "virtio-blk-pci,drive=dma0,serial=harness-dma"]


# ---- the knob ------------------------------------------------------------------------------------------------------
def test_dma_frac_is_off_by_default():
    assert Scenario().ledger.dma_frac == 0.0


@pytest.mark.parametrize("value", ["-0.1", "1.5", "lots"])
def test_dma_frac_outside_0_1_is_an_error(value):
    with pytest.raises((InputError, ValueError), match="dma_frac"):
        parse_scenario("seed: 1\n", overrides=[f"ledger.dma_frac={value}"])


# ---- scenario -> L2 cmdline and start-l2.sh environment ------------------------------------------------------------
@pytest.mark.parametrize("frac, word, disk_mb", [
    (0.0, None, "0"),
    (0.25, ",dma-frac:0.25", str(l1host.DMA_DISK_MB)),
    (1.0, ",dma-frac:1.0", str(l1host.DMA_DISK_MB)),
])
def test_dma_frac_reaches_the_l2_cmdline_and_env(frac, word, disk_mb):
    s = parse_scenario("tdp_mmu: false\n", overrides=[f"ledger.dma_frac={frac}"])
    app = l1host.l2_append(s)
    ledger = next(w for w in app.split() if w.startswith("harness.ledger="))
    if word:
        assert ledger.endswith(word)
    else:
        assert "dma" not in app
    env = l1host.start_l2_env(s)
    assert env["DMA_DISK_MB"] == disk_mb and env["L2_APPEND"] == app
    assert set(env) == {"L2_MEM_MB", "L2_CPUS", "MEMORY_MAX_MB", "BACKEND", "L2_APPEND", "KERNEL_NODE_MB",
                        "DMA_DISK_MB"}


def test_default_cmdline_is_unchanged_by_the_knob():
    assert l1host.l2_append(Scenario()) == l1host.l2_append(parse_scenario("ledger: {dma_frac: 0}\n"))


# ---- start-l2.sh: the disk ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("frac, has_disk", [(0.0, False), (0.25, True)])
def test_start_l2_gives_l2_the_dma_disk_only_when_enabled(frac, has_disk):
    s = parse_scenario("seed: 1\n", overrides=[f"ledger.dma_frac={frac}"])
    argv = l2_argv(l1host.start_l2_env(s))
    text = " ".join(argv)
    assert ("virtio-blk-pci" in text) == has_disk
    if has_disk:
        i = argv.index("-drive")
        assert argv[i:i + 4] == DMA_ARGS
        assert argv.index("-kernel") > i  # after the result channel, before the kernel
    # never a backing that does not read the guest's buffer
    assert not re.search(r"null-co|/dev/null|/dev/zero", text)
    assert argv[-1] == l1host.l2_append(s)


def test_start_l2_fills_the_backing_before_qemu_starts():
    text = (REPO / "guest-images/l1/start-l2.sh").read_text()
    fill = text.index("of=/run/l2-dma.disk")
    assert "dd if=/dev/zero" in text[text.rfind("\n", 0, fill):fill] and fill < text.index("setsid sh -c")


# ---- L2's init: cmdline -> ledger arguments ------------------------------------------------------------------------
def init_args(cmdline_word: str) -> str:
    """The ledger arguments L2's init makes of a harness.ledger= word (its own sed, run by a real shell)."""
    text = (REPO / "guest-images/l2/init").read_text()
    line = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("harness.ledger=*)"))
    body = line.split(")", 1)[1].rsplit(";;", 1)[0]
    out = subprocess.run(["sh", "-c", f'w="$1"; {body}; printf %s "$args"', "sh", cmdline_word],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout


@pytest.mark.parametrize("frac, want", [(0.0, None), (0.25, "--dma-frac 0.25"), (1.0, "--dma-frac 1.0")])
def test_init_passes_dma_frac_through(frac, want):
    s = parse_scenario("seed: 1\n", overrides=[f"ledger.dma_frac={frac}"])
    word = next(w for w in l1host.l2_append(s).split() if w.startswith("harness.ledger="))
    args = init_args(word)
    assert args.startswith(f"--pages {s.ledger_pages} --rounds 12") and "--node 1" in args
    assert (want in args) if want else "dma" not in args


def test_init_finds_the_disk_by_serial_and_loads_the_modules():
    text = (REPO / "guest-images/l2/init").read_text()
    assert "harness-dma" in text and "/lib/modules/order" in text and "--dma-dev" in text


# ---- the L2 image carries L2's kernel's virtio_blk -----------------------------------------------------------------
def test_l2_image_installs_modules_uncompressed_in_load_order(tmp_path, monkeypatch):
    if not shutil.which("busybox") or not shutil.which("cpio"):
        pytest.skip("busybox-static/cpio not installed (make setup)")
    from harness.images import l2
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    mod = tmp_path / "k/virtio_blk.ko.xz"
    mod.parent.mkdir()
    mod.write_bytes(lzma.compress(b"\x7fELF not really a module"))
    monkeypatch.setattr(l2, "l2_module_files", lambda kdir: [mod])
    img = l2.build_l2_image(tmp_path / "k")
    assert img != l2.build_l2_image()  # the modules are part of the key
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "-F", str(img.initramfs)], cwd=out, check=True)
    assert (out / "lib/modules/virtio_blk.ko").read_bytes() == b"\x7fELF not really a module"
    assert (out / "lib/modules/order").read_text() == "virtio_blk.ko\n"


def test_debian_l2_kernel_has_virtio_blk_as_a_module():
    from harness.images.l2 import l2_module_files
    from harness.kernel.prebuilt import find_existing
    kdir = find_existing()
    if not kdir:
        pytest.skip("Debian's prebuilt 6.12 is not in the cache")
    assert [f.name for f in l2_module_files(kdir)] == ["virtio_blk.ko.xz"]


# ---- the ledger's DMA writes (native) ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ledger_bin(tmp_path_factory):
    return build_ledger(tmp_path_factory.mktemp("ledger") / "ledger")


def dma_disk(tmp_path: Path, mb: int = 1) -> Path:
    disk = tmp_path / "dma.img"
    with open(disk, "wb") as f:
        f.truncate(mb << 20)
    try:
        os.close(os.open(disk, os.O_WRONLY | os.O_DIRECT))
    except OSError:
        pytest.skip(f"{tmp_path}: no O_DIRECT on this filesystem")
    return disk


def run(binary, *args):
    p = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120)
    return p.returncode, ledger_oracle.parse_console(p.stdout), p.stderr


BASE = ["--pages", "2048", "--rounds", "3", "--window", "0", "--seed", "5", "--trail", "2"]


def test_dma_writes_the_ledgers_own_pages_and_checks_the_same(ledger_bin, tmp_path):
    disk = dma_disk(tmp_path)
    rc0, plain, _ = run(ledger_bin, *BASE)
    rc, res, err = run(ledger_bin, *BASE, "--dma-frac", "0.25", "--dma-dev", str(disk))
    assert rc == rc0 == 0 and res.done, err
    # verification is unchanged: the same pages checked, the same writes, nothing bad
    assert (res.pages_verified, res.trail_verified, res.bad_total) == (plain.pages_verified, plain.trail_verified, 0)
    assert [e for e in res.events if e["ev"] == "round"] == [
        {**e, "t": r["t"]} for e, r in zip([e for e in plain.events if e["ev"] == "round"],
                                           [e for e in res.events if e["ev"] == "round"], strict=True)]
    dma = [e for e in res.events if e["ev"] == "dma"]
    assert len(dma) == 1 and dma[0]["dev"] == str(disk) and dma[0]["disk_bytes"] == 1 << 20
    assert 0.15 * 3 * 2048 < dma[0]["pages"] < 0.35 * 3 * 2048 and dma[0]["writes"] >= 3
    assert [e["ev"] for e in res.events][-2:] == ["dma", "done"]
    # the disk holds ledger pages as written (header magic "LEDGERPG", index < pages, generation >= 1)
    data = disk.read_bytes()
    pages = [data[o:o + 4096] for o in range(0, len(data), 4096)]
    hdrs = [struct.unpack_from("<QQQQ", p) for p in pages]
    assert all(h[0] == 0x4C45444745525047 and h[1] < 2048 and 1 <= h[2] <= 4 and h[3] == 5 for h in hdrs)


def test_dma_offsets_cycle_through_a_small_disk(ledger_bin, tmp_path):
    disk = dma_disk(tmp_path)
    with open(disk, "r+b") as f:
        f.truncate(16 * 4096)
    rc, res, err = run(ledger_bin, *BASE, "--dma-frac", "0.5", "--dma-dev", str(disk))
    dma = next(e for e in res.events if e["ev"] == "dma")
    assert rc == 0 and res.bad_total == 0 and dma["pages"] > 16 and disk.stat().st_size == 16 * 4096, err


@pytest.mark.parametrize("args, rc", [(["--dma-frac", "0.5"], 2), (["--dma-frac", "2", "--dma-dev", "/x"], 2),
                                      (["--dma-frac", "0.5", "--dma-dev", "/nonexistent/disk"], 3)])
def test_dma_needs_a_device_and_a_fraction(ledger_bin, args, rc):
    got, res, err = run(ledger_bin, "--pages", "16", "--rounds", "1", "--window", "0", *args)
    assert got == rc and not res.started and err
