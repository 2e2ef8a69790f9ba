"""The guest contract, in one place: what a guest (today's Linux L2 with its ledger, or the micro-guest VMM) and
the harness agree on.  Pure constants and small pure helpers: no I/O, no import of the rest of the project, so
the oracles, the images and the scenario stage can all read it.

- Result lines: one JSON object per line after a marker.  `@@LEDGER ` lines (start, round, bad, selftest, dma,
  done) have the ledger's schema (guest-images/ledger/ledger.c, parsed by harness/oracles/ledger.py) whichever
  guest prints them; `@@MICRO ` lines (step, dirtylog, counters) are the micro-guest's choreography log
  (guest-images/microvm/, parsed by harness/oracles/micro.py).
- Files in L1: where each guest's output, result channel and exit status land (the scenario stage follows and
  collects them over SSH), and the names they get in the case's results folder.
- The data region: the guest-physical range of the pages that the oracles judge (gfn 0x100000 = 4 GiB up): the
  Linux L2's data DIMM (QEMU's pc machine places a cold-plugged DIMM there) and the micro-guest's data slot.
"""
from __future__ import annotations

from dataclasses import dataclass

LEDGER_PREFIX = "@@LEDGER "
MICRO_PREFIX = "@@MICRO "

# -- the data region ------------------------------------------------------------------------------------------
DATA_GFN_BASE = 0x100000  # 4 GiB: above the 32-bit PCI hole, where the pc machine puts the first DIMM
PAGES_PER_MB = 256


def data_gfn_range(pages: int) -> tuple[int, int]:
    """[first gfn, limit) of a data region of `pages` 4 KiB pages."""
    return DATA_GFN_BASE, DATA_GFN_BASE + pages


def linux_l2_gfn_range(l2_memory_mb: int, kernel_node_mb: int) -> tuple[int, int]:
    """The gfns of the Linux L2's ledger pages: its data DIMM when L2's kernel has a node of its own, else all of
    L2's RAM (below 4 GiB) plus a little slack."""
    if kernel_node_mb:
        return data_gfn_range((l2_memory_mb - kernel_node_mb) * PAGES_PER_MB)
    return 0, l2_memory_mb * PAGES_PER_MB + 0x100


# -- result-line schemas: the fields each event must carry (extra fields are allowed) --------------------------
LEDGER_EVENTS: dict[str, tuple[str, ...]] = {
    "start": ("pages", "rounds"),
    "round": ("round",),
    "bad": ("class", "round", "index", "gfn", "expected", "found"),
    "selftest": ("stale", "zero", "corrupt"),
    "dma": ("pages",),
    "done": ("verified", "stale", "zero", "corrupt"),
}
MICRO_EVENTS: dict[str, tuple[str, ...]] = {
    "step": ("chor", "round", "step", "first_gfn", "npages"),
    "dirtylog": ("chor", "round", "written", "logged", "missing"),
    "counters": ("pageouts", "pages_out", "pages_in"),
    "race": ("chor", "round", "sweeps", "pageouts", "overlapped", "faults", "vcpu_cpu", "pager_cpu"),
}
BAD_CLASSES = ("stale", "zero", "corrupt")
MICRO_STEPS = ("guest-write", "pageout", "reclaim", "host-read", "guest-read", "guest-verify", "collapse", "split",
               "discard", "ksm-merge", "dirty-harvest")

# -- the micro-guest's choreographies ---------------------------------------------------------------------------
# The names are the contract with guest-images/microvm (its `microvm --list` prints NAME<TAB>description; a unit
# test keeps this table equal to it).  Each stages one window of the lost-write race.
CHOREOGRAPHIES: dict[str, str] = {
    "write-pageout-read-write": "write, page out, read fault after swap-out (writable-clean host PTE, writable SPTE),"
                                " write with no fault, page out, verify: the zap must dirty the folio",
    "host-read-prefetch": "page out, host reads swap the batch in (no SPTE), guest faults one gfn per 8-gfn group "
                          "(shadow-MMU prefetch maps the neighbours), writes the neighbours, page out, verify",
    "dirty-log": "dirty logging on; write, page out, harvest, read after swap-out, write, page out, harvest: every "
                 "written page must be in KVM_GET_DIRTY_LOG, and verify",
    "readonly-then-write": "never-written pages read by the guest (zero page, read-only SPTE), then written (COW), "
                           "page out, read after swap-out, write, page out, verify",
    "thp-collapse": "THP backend: write, page out, read after swap-out, MADV_COLLAPSE, verify, write (2 MiB SPTE), "
                    "page out, verify",
    "thp-split": "THP backend: write a THP (2 MiB SPTE), page out 8 of its pages (split), verify, write, page out, "
                 "read after swap-out, write, page out, verify",
    "ksm-then-write": "identical pages merged by ksmd (one read-only pfn), read by the guest (read-only SPTE), "
                      "written (COW break), page out, read after swap-out, write, page out, verify (needs ksm on)",
    "race-pageout": "the vCPU rewrites the batch sweep after sweep on L1 CPU 0 while a pager thread on L1 CPU 1 "
                    "pages it out and reclaims (race.c); host view then guest view against the last completed sweep",
}
# the concurrent ones: a vCPU in guest code while the VMM acts on another L1 CPU (needs l1.cpus >= 2 to race)
RACE_CHOREOGRAPHIES = ("race-pageout",)
# the ones that need no THP backend and no KSM (scenarios/micro.yaml, the `micro` knobs' default)
DEFAULT_CHOREOGRAPHIES = ("write-pageout-read-write", "host-read-prefetch", "dirty-log", "readonly-then-write")
MICRO_BACKENDS = ("anon", "thp", "memfd", "file")
MICRO_DATA_FILE = "/run/microvm.data"  # the `file` backend's file in L1's tmpfs


def unknown_choreographies(names: list[str]) -> list[str]:
    return [n for n in names if n not in CHOREOGRAPHIES]


def parse_list_output(text: str) -> dict[str, str]:
    """`microvm --list` (NAME<TAB>description per line) as a table."""
    out = {}
    for line in text.splitlines():
        if line.strip():
            name, _, desc = line.partition("\t")
            out[name.strip()] = desc.strip()
    return out


# -- microvm's exit codes --------------------------------------------------------------------------------------
MICRO_RC_PASS, MICRO_RC_BAD, MICRO_RC_USAGE, MICRO_RC_INFRA = 0, 1, 2, 3


# -- files in L1 and in the results folder ----------------------------------------------------------------------
@dataclass(frozen=True)
class GuestFiles:
    """Where a guest's output lands in L1, and what the case folder calls it.

    `stream` is followed live (tail -F) into `stream_local`; `result` is the lossless copy of the result lines,
    collected at the end into `result_local` (None: the stream is all there is); `rc` holds the guest's exit
    status once it has ended; `log` its launcher's stderr; `cgroup` the cgroup v2 leaf it runs in."""
    stream: str
    stream_local: str
    result: str | None
    result_local: str | None
    rc: str
    log: str
    log_local: str
    cgroup: str
    up_marker: bytes  # the stream line that says the guest's workload is starting
    exit_marker: bytes | None  # the stream line that says the guest has ended (None: poll `rc`)


LINUX_L2_FILES = GuestFiles(
    stream="/run/l2-console.log", stream_local="l2-console.log",  # L2's serial console
    result="/run/l2-result.log", result_local="l2-result.log",  # the virtio-serial result channel
    rc="/run/l2.rc", log="/run/l2-qemu.log", log_local="l2-qemu.log", cgroup="/sys/fs/cgroup/l2",
    up_marker=b"HARNESS-L2: init", exit_marker=None)

MICRO_FILES = GuestFiles(
    # microvm's stdout is a file in L1's tmpfs: lossless already, collected whole at the end
    stream="/run/micro.out", stream_local="micro-out.log", result="/run/micro.out", result_local="micro-out.log",
    rc="/run/micro.rc", log="/run/micro.err", log_local="micro-err.log", cgroup="/sys/fs/cgroup/micro",
    up_marker=b"HARNESS-MICRO: start", exit_marker=b"HARNESS-MICRO: exit")

# written to the trace's trace_marker just before the VMM starts (start-micro.sh): its clock's zero on the trace's
MICRO_TRACE_MARK = b"tracing_mark_write: HARNESS-MICRO: start"
MICRO_STEPS_FILE = "micro-steps.jsonl"  # the @@MICRO lines of a run, in the results folder
GUEST_FILES = {"linux": LINUX_L2_FILES, "micro": MICRO_FILES}
