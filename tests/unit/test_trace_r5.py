"""Trace rule R5 (harness/oracles/trace_freed_mapped.py): a pfn freed while a present leaf SPTE still maps it.
Recorded real traces of the micro-guest's race-pageout choreography on 7.2 (the race mutant a, clean 7.2 and the
control, TDP and shadow MMU) and 6.12 (race mutant a, clean), and synthetic lines for what the recordings do not hold: CPU order, lost events, cut lines, huge pages,
the shadow MMU and zap-time captures."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.oracles import trace as T
from harness.oracles.trace_freed_mapped import ORDER_S
from harness.oracles.trace_spte import table_layout

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "trace"
LAY72 = table_layout("7.2", "amd")
TDP = {"kvm_tdp_mmu_spte_changed", "kvm_mmu_spte_requested", "kvm_unmap_hva_range", "mm_page_free",
       "mm_vmscan_write_folio", "dirty_page", "reclaim_clean"}
SHADOW = (TDP - {"kvm_tdp_mmu_spte_changed"}) | {"kvm_mmu_set_spte", "shadow_zap"}


def check(ls: list[bytes], ruleset: str = "create-time", available: set[str] | None = TDP) -> T.Result:
    return T.check_lines(ls, "amd", ruleset, available, layout=LAY72)


# ---- recorded: race-pageout on 7.2 (first 7000 lines of each run's trace; the runs' ledger verdicts) -----------
RECORDED = [  # fixture, ruleset, R5 violations, the gfns R5 names (L2 gfns: the ledger's stale ones where it verified)
    ("r5-race-7.2-a-amd.txt.gz", "create-time", 2, {0x10000C, 0x100011}),
    ("r5-clean-7.2-amd.txt.gz", "create-time", 0, set()),
    # L1 stopped answering before the ledger verified a page: R5 alone names the first batch's 16 pages
    ("r5-race-7.2-a-l1-lost-amd.txt.gz", "create-time", 16, set(range(0x100000, 0x100010))),
    ("r5-ctl-7.2-amd.txt.gz", "create-time", 0, set()),
    # 6.12 is a zap-time kernel: the micro-guest's capture keeps the installs there (tracing.py)
    ("r5-race-6.12-a-amd.txt.gz", "zap-time", 18, {*range(0x100000, 0x100010), 0x100011, 0x100019}),
    ("r5-clean-6.12-amd.txt.gz", "zap-time", 0, set()),
]


@pytest.mark.parametrize("name,ruleset,violations,stale", RECORDED)
def test_recorded_race_pageout(name: str, ruleset: str, violations: int, stale: set[int]) -> None:
    ls = list(T.open_lines(FIX / name))
    layout = LAY72 if ruleset == "create-time" else table_layout("6.12", "amd")
    res = T.check_lines(ls, "amd", ruleset, TDP | {"dirty_pfn"}, layout=layout, installs_traced=True)
    st = res.rules["R5"]
    assert st.ran and st.checked > 75  # frees of pfns an SPTE had mapped: a clean run checks many
    assert st.violations == violations
    assert {e["gfn"] for e in st.examples} == stale  # each violation is a page the ledger found stale
    assert st.dropped_by_loss == st.dropped_by_cut == st.dropped_by_order == 0
    assert all(res.rules[r].violations == 0 for r in ("R1", "R2", "R3", "R4"))  # the race hides from the dirty rules


SHADOW_STALE = {0x100004, 0x100005, 0x100009, 0x10000A, *range(0x100010, 0x100030), 0x10003F}


@pytest.mark.parametrize("name,violations,stale", [("r5-race-7.2-a-shadow-amd.txt.gz", 37, SHADOW_STALE),
                                                   ("r5-clean-7.2-shadow-amd.txt.gz", 0, set())])
def test_recorded_race_pageout_on_the_shadow_mmu(name: str, violations: int, stale: set[int]) -> None:
    res = check(list(T.open_lines(FIX / name)), available=SHADOW)
    assert res.counts["kvm_mmu_set_spte"] > 1000 and res.counts["shadow_zap"] > 1000
    assert res.counts.get("kvm_tdp_mmu_spte_changed", 0) == 0
    st = res.rules["R5"]
    assert st.checked > 400 and st.violations == violations and st.gfns == stale  # the whole run: every stale gfn
    assert res.rules["R4"].checked > 300 and res.rules["R4"].violations == 0


def test_recorded_mutant_names_install_and_free() -> None:
    res = check(list(T.open_lines(FIX / "r5-race-7.2-a-amd.txt.gz")))
    ex = res.rules["R5"].examples[0]
    # fixture line 867: CPU 0 installs gfn 0x10000c -> pfn 0x60a2b; line 943: CPU 1 frees it 25 ms later, no zap
    # between (the zap of that stale SPTE comes 1.3 s later, at 11.270889)
    assert (ex["gfn"], ex["pfn"], ex["spte_line"], ex["spte_ts"], ex["spte_cpu"]) == (0x10000C, 0x60A2B, 867,
                                                                                     "9.900411", 0)
    assert (ex["free_line"], ex["free_ts"], ex["free_cpu"], ex["spte_event"]) == (943, "9.925271", 1, "install")
    f = [x for x in T.findings(res, ledger_gfns=[0x10000C]) if x["rule"] == "R5"][0]
    assert f["kind"] == "R5-violation" and f["ledger_gfns_matched"] == [0x10000C]
    assert T.rules_json(res)["R5"]["dropped_by_cpu_order"] == 0


# ---- synthetic lines ----------------------------------------------------------------------------------------
def hdr(ts: float, cpu: int, pid: int = 171) -> bytes:
    return b"%16s-%-7d [%03d] %12.6f: " % (b"microvm", pid, cpu, ts)


def chg(ts: float, cpu: int, gfn: int, old: int, new: int, level: int = 1) -> bytes:
    return hdr(ts, cpu) + b"kvm_tdp_mmu_spte_changed: as id 0 gfn %x level %d old_spte %x new_spte %x" % (
        gfn, level, old, new)


def free(ts: float, cpu: int, pfn: int, order: int = 0) -> bytes:
    return hdr(ts, cpu, 175) + b"mm_page_free: page=00000000148da8f7 pfn=%#x order=%d" % (pfn, order)


def set_spte(ts: float, cpu: int, gfn: int, spte: int, level: int = 1) -> bytes:
    return hdr(ts, cpu) + b"kvm_mmu_set_spte: gfn %x spte %x (rwxu) level %d" % (gfn, spte, level)


def shadow_zap(ts: float, cpu: int, spte: int) -> bytes:
    return hdr(ts, cpu) + b"shadow_zap: (mmu_spte_clear_track_bits+0x4/0x1b0 [kvm]) spte=%#x" % spte


NONE = 0x8000000000000000  # SHADOW_NONPRESENT_VALUE
G, P = 0x10000C, 0x60A2B


def spte(pfn: int, large: bool = False) -> int:
    return (pfn << 12) | 0xE67 | (0x80 if large else 0)  # present, host-writable, D, A, W, P (7.2 AMD)


MAP = chg(1.0, 0, G, NONE, spte(P))
ZAP = chg(1.5, 1, G, spte(P), NONE)
LOST = b"CPU:1 [LOST 20 EVENTS]"
CUT = b"stale text " + free(1.2, 1, 0x99999)  # a header far right of column 25: an event cut short before it
LATER = free(3.0, 1, 0x12345)  # an unrelated event that moves the trace's clock on

CASES: list[tuple[str, list[bytes], dict[str, Any]]] = [
    ("installed then freed, no zap", [MAP, free(1.2, 1, P), LATER], {"checked": 1, "violations": 1}),
    ("zapped then freed: the order owed", [MAP, ZAP, free(1.6, 1, P)], {"checked": 1, "violations": 0}),
    ("freed, reused, installed again", [free(0.9, 1, P), MAP, ZAP, free(1.6, 1, P)],
     {"checked": 1, "violations": 0}),
    ("never mapped: not checked", [free(1.0, 1, P)], {"checked": 0, "violations": 0}),
    ("install on another CPU just before the free", [MAP, free(1.0 + ORDER_S / 2, 1, P), LATER],
     {"checked": 1, "violations": 0, "dropped_by_order": 1}),
    ("install on the same CPU just before the free: exact order", [MAP, free(1.0 + ORDER_S / 2, 0, P), LATER],
     {"checked": 1, "violations": 1}),
    ("zap on another CPU just after the free", [MAP, free(1.2, 1, P), chg(1.2 + ORDER_S / 2, 0, G, spte(P), NONE)],
     {"checked": 1, "violations": 0, "dropped_by_order": 1}),
    ("zap on the free's CPU just after it: exact order", [MAP, free(1.2, 1, P), chg(1.2 + ORDER_S / 2, 1, G,
                                                                                    spte(P), NONE)],
     {"checked": 1, "violations": 1}),
    ("zap long after the free (the mutant's shape)", [MAP, free(1.2, 1, P), chg(2.0, 0, G, spte(P), NONE)],
     {"checked": 1, "violations": 1}),
    ("free at the very end of the trace", [MAP, free(1.2, 1, P)], {"checked": 1, "violations": 1}),
    ("lost events between install and free", [MAP, LOST, free(1.2, 1, P), LATER],
     {"checked": 1, "violations": 0, "dropped_by_loss": 1}),
    ("a cut line between install and free", [MAP, CUT, free(1.3, 1, P), LATER],
     {"checked": 1, "violations": 0, "dropped_by_cut": 1}),
    ("lost events, then the SPTE seen again", [MAP, LOST, chg(1.1, 0, G, spte(P), spte(P) & ~0x20),
                                               free(1.2, 1, P), LATER], {"checked": 1, "violations": 1}),
    ("the same stale SPTE's page freed twice: one violation", [MAP, free(1.2, 1, P), free(1.4, 1, P), LATER],
     {"checked": 1, "violations": 1}),
    ("an order-3 free covering the mapped pfn", [MAP, free(1.2, 1, P & ~7, order=3), LATER],
     {"checked": 1, "violations": 1}),
    ("a 2 MiB SPTE covers its 512 pfns", [chg(1.0, 0, 0x100000, NONE, spte(0x60000, True), level=2),
                                          free(1.2, 1, 0x60005), LATER], {"checked": 1, "violations": 1}),
    ("a 2 MiB SPTE split: its children get no event, the huge mapping ends", [
        chg(1.0, 0, 0x100000, NONE, spte(0x60000, True), level=2),
        chg(1.1, 0, 0x100000, spte(0x60000, True), (0x7777 << 12) | 0xE07, level=2),
        free(1.2, 1, 0x60005), LATER], {"checked": 1, "violations": 0}),
]


@pytest.mark.parametrize("name,ls,want", CASES, ids=[c[0] for c in CASES])
def test_r5_synthetic(name: str, ls: list[bytes], want: dict[str, int]) -> None:
    st = check(ls).rules["R5"]
    got = {k: getattr(st, k) for k in want}
    assert got == want, name


def test_violation_names_gfn_pfn_install_and_free() -> None:
    ex = check([MAP, free(1.2, 1, P & ~7, order=3), LATER]).rules["R5"].examples[0]
    assert (ex["gfn"], ex["pfn"], ex["spte_line"], ex["spte_ts"], ex["free_line"], ex["free_ts"]) == (
        G, P, 1, "1.000000", 2, "1.200000")


def test_zap_time_capture_knows_an_spte_from_its_first_traced_change() -> None:
    aged = chg(1.0, 0, G, spte(P), spte(P) & ~0x20)  # aging clears A: the only line a zap-time capture keeps
    st = check([aged, free(1.2, 1, P), LATER], ruleset="zap-time").rules["R5"]
    assert st.violations == 1 and st.examples[0]["spte_event"] == "first traced change"
    assert "first traced change" in T.rules_json(check([aged], ruleset="zap-time"))["R5"]["why"]


def test_shadow_mmu_installs_and_zaps() -> None:
    s = spte(P)
    bad = check([set_spte(1.0, 0, G, s), free(1.2, 1, P), LATER], available=SHADOW).rules["R5"]
    assert (bad.checked, bad.violations, bad.examples[0]["gfn"]) == (1, 1, G)
    ok = check([set_spte(1.0, 0, G, s), shadow_zap(1.1, 1, s), free(1.2, 1, P), LATER], available=SHADOW)
    assert (ok.rules["R5"].checked, ok.rules["R5"].violations) == (1, 0)
    huge = check([set_spte(1.0, 0, 0x100000, spte(0x60000, True), level=2), free(1.2, 1, 0x601FF), LATER],
                 available=SHADOW).rules["R5"]
    assert huge.violations == 1 and huge.examples[0]["level"] == 2


def test_shadow_installs_without_the_zap_probe_do_not_run() -> None:
    st = check([set_spte(1.0, 0, G, spte(P)), free(1.2, 1, P)], available=SHADOW - {"shadow_zap"}).rules["R5"]
    assert not st.ran and "shadow_zap" in st.why and st.checked == 0


def test_missing_free_event_means_not_run_and_zero_checks_are_vacuous() -> None:
    assert "mm_page_free" in check([MAP], available=TDP - {"mm_page_free"}).rules["R5"].why
    assert "vacuous" in T.rules_json(check([MAP]))["R5"]["why"]


def test_a_free_waiting_at_a_max_mb_cut_is_unresolved_not_judged() -> None:
    chk = T.Checker("amd", "create-time", TDP, layout=LAY72)
    for ln in (MAP, free(1.2, 1, P)):
        chk.feed(ln)
    chk.truncate()
    st = chk.finish().rules["R5"]
    assert (st.checked, st.violations, st.unresolved_at_end) == (1, 0, 1)


def test_set_spte_level() -> None:
    assert T.set_spte_level(b"gfn 100000 spte 60000ee7 (rwxu) level 2") == 2
    assert T.set_spte_level(b"gfn 100000 spte 60000ee7 (rwxu) lev") == 1


# ---- the capture: a zap-time kernel's micro-guest keeps the installs R5 needs -------------------------------
class FakeShell:
    """Just enough of L1Shell for TraceCapture.start(): trace-start.sh's facts, the filter file, an empty stream."""
    broken = False

    def __init__(self, facts: str, filter_ok: bool = True):
        self.facts, self.filter_ok = facts, filter_ok
        self.cmds: list[str] = []

    def run(self, cmd, timeout=None, check=True):
        self.cmds.append(cmd)
        return self.facts if "trace-start.sh" in cmd else ""

    def try_run(self, cmd, timeout=None):
        self.cmds.append(cmd)
        if not self.filter_ok:
            return None, "write error: Invalid argument"
        return cmd.split("'")[1] + "\n", None  # the filter file reads back what was written

    def stream(self, cmd):
        from types import SimpleNamespace
        return SimpleNamespace(read_ready=lambda: b"", ended=lambda: True, close=lambda: None)


@pytest.mark.parametrize("guest,release,filter_ok,widened,traced", [
    ("micro", "6.12.118+deb12-amd64", True, True, True),  # zap-time, micro: widened, installs traced
    ("micro", "6.12.118+deb12-amd64", False, True, False),  # L1 refused the filter: R5 says installs are not seen
    ("linux", "6.12.118+deb12-amd64", True, False, False),  # the Linux L2's volume: the filter stays
    ("micro", "7.2.13+deb14-amd64", True, False, True),  # create-time captures keep installs anyway
])
def test_capture_keeps_installs_for_the_micro_guest(tmp_path: Path, guest: str, release: str, filter_ok: bool,
                                                     widened: bool, traced: bool) -> None:
    from harness.config import Scenario
    from harness.scenario.tracing import TraceCapture
    facts = "event=kvmmmu:kvm_tdp_mmu_spte_changed\nevent=kmem:mm_page_free\nkprobe=dirty_pfn:x\n"
    run: dict[str, Any] = {"kernel": {"source": "debian-package", "release": release},
                           "l1": {"kvm_module": "kvm_amd"}}
    sh = FakeShell(facts, filter_ok)
    cap = TraceCapture(sh, Scenario(guest=guest), tmp_path, run, gfn_range=(0x100000, 0x100040))
    cap.start()
    assert cap.thread is not None and cap.checker is not None
    cap.thread.join(5)
    wrote = [c for c in sh.cmds if "kvm_tdp_mmu_spte_changed/filter" in c]
    assert bool(wrote) == widened
    if wrote:
        assert "'gfn >= 0x100000 && gfn < 0x100040'" in wrote[0]
    assert run["trace"]["spte_installs_traced"] is traced and cap.checker.installs_traced is traced
    assert cap.checker.rules["R5"].ran


# ---- a run whose L1 stops answering still judges the trace that reached L0 (harness/scenario/case.py) ---------
def test_l1_lost_mid_run_still_judges_the_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from harness.config import Scenario
    from harness.errors import InfraError
    from harness.guest import guest_for
    from harness.scenario import case, l1host, tracing
    from harness.scenario.case import new_evidence

    calls: list[Any] = []

    class FakeCapture:  # the capture of a run whose micro-guest convicted: one R5 finding
        def __init__(self, *a: Any, **k: Any) -> None:
            self.run: dict[str, Any] = {"trace": {"rules": {"R5": {"violations": 1}}}}

        def start(self) -> None:
            calls.append("start")

        def stop(self) -> None:
            calls.append("stop")

        def judge(self, ledger: Any) -> list[dict[str, Any]]:
            calls.append(("judge", ledger))
            return [{"oracle": "trace", "layer": "L1", "kind": "R5-violation", "title": "trace rule R5: 1 x"}]

    class LostMonitor:  # L1 stops answering while the guest runs
        def __init__(self, *a: Any, **k: Any) -> None:
            pass

        def run(self, t_l2: float, deadline: float) -> None:
            raise InfraError("L1 command failed (exit -1): cat /proc/vmstat")

    monkeypatch.setattr(tracing, "TraceCapture", FakeCapture)
    monkeypatch.setattr(l1host, "Monitor", LostMonitor)
    monkeypatch.setattr(case, "_setup_l1", lambda *a, **k: None)
    monkeypatch.setattr(case, "_monitor_facts", lambda *a, **k: None)
    s = Scenario(guest="micro", trace={"enabled": True})
    ev = new_evidence(s, "default", None)
    sh = SimpleNamespace(run=lambda *a, **k: "", broken="SSH connection to L1 lost")
    class Log:  # RunProgress: callable, with phases
        ledger = sample = None

        def __call__(self, *a: Any) -> None:
            pass

        def phase(self, *a: Any) -> None:
            pass

    with pytest.raises(InfraError):
        case._drive_l1(s, guest_for(s), ev, tmp_path, sh, None, 1.0, 1e18, 0.0, Log())  # type: ignore[arg-type]
    assert calls == ["start", "stop", ("judge", None)]  # stopped once, judged without a ledger
    assert [f.kind for f in ev.trace_findings] == ["R5-violation"] and ev.trace["rules"]["R5"]["violations"] == 1


def test_a_capture_whose_l1_was_lost_leaves_the_last_frees_unresolved(tmp_path: Path) -> None:
    from harness.config import Scenario
    from harness.scenario.tracing import TraceCapture
    facts = "event=kvmmmu:kvm_tdp_mmu_spte_changed\nevent=kmem:mm_page_free\nkprobe=dirty_page:x\n"
    run: dict[str, Any] = {"kernel": {"source": "debian-package", "release": "7.2.13+deb14-amd64"},
                           "l1": {"kvm_module": "kvm_amd"}}
    sh = FakeShell(facts)
    cap = TraceCapture(sh, Scenario(guest="micro"), tmp_path, run, gfn_range=(0x100000, 0x100040))
    cap.start()
    assert cap.thread is not None and cap.checker is not None
    cap.thread.join(5)
    for ln in (MAP, free(1.2, 1, P)):  # the last lines that reached L0: a free still waiting ORDER_S
        cap.checker.feed(ln)
    sh.broken = "SSH connection to L1 lost"  # type: ignore[assignment]
    findings = cap.judge(None)
    r5 = run["trace"]["rules"]["R5"]
    assert (r5["events_checked"], r5["violations"], r5["unresolved_at_end"]) == (1, 0, 1) and not findings
    assert "L1 stopped answering" in r5["why"]


# ---- the micro-guest's stream: raw text compressed in L0, every chunk readable at once ---------------------
def test_stream_store_raw_keeps_every_chunk_readable_and_gzip_passes_members_through(tmp_path: Path) -> None:
    import gzip
    import io
    import zlib

    from harness.scenario.tracing import StreamStore
    chunks = [MAP + b"\n", free(1.2, 1, P) + b"\n" + LATER[:30], LATER[30:] + b"\n"]
    out = io.BytesIO()
    st = StreamStore(out, raw=True)
    assert [st.put(c) for c in chunks] == chunks
    # L1 died here (close() never ran): everything that arrived decodes from the file as it stands
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(out.getvalue()) == b"".join(chunks)
    st.close()
    assert gzip.decompress(out.getvalue()) == b"".join(chunks)
    members = gzip.compress(chunks[0]) + gzip.compress(chunks[1] + chunks[2])  # L1's gzip, restarted once
    out2 = io.BytesIO()
    st2 = StreamStore(out2, raw=False)
    got = st2.put(members[:25]) + st2.put(members[25:])
    st2.close()
    assert got == b"".join(chunks) and out2.getvalue() == members


def test_micro_capture_streams_raw_text_and_stores_gzip(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from harness.config import Scenario
    from harness.scenario.tracing import PIPE_CMD, RAW_CMD, TraceCapture

    class Shell(FakeShell):
        def stream(self, cmd: str) -> Any:
            self.cmds.append(cmd)
            data = [MAP + b"\n" + free(1.2, 1, P)[:20], free(1.2, 1, P)[20:] + b"\n" + LATER + b"\n"]
            return SimpleNamespace(read_ready=lambda: data.pop(0) if data else b"", ended=lambda: not data,
                                   close=lambda: None)

    facts = "event=kvmmmu:kvm_tdp_mmu_spte_changed\nevent=kmem:mm_page_free\nkprobe=dirty_page:x\n"
    for guest, cmd in (("micro", RAW_CMD), ("linux", PIPE_CMD)):
        run: dict[str, Any] = {"kernel": {"source": "debian-package", "release": "7.2.13+deb14-amd64"},
                               "l1": {"kvm_module": "kvm_amd"}}
        sh = Shell(facts)
        cap = TraceCapture(sh, Scenario(guest=guest), tmp_path, run, gfn_range=(0x100000, 0x100040))
        cap.start()
        assert cap.thread is not None
        cap.thread.join(5)
        assert sh.cmds[-1] == cmd
        if guest == "micro":
            assert "gzip" not in cmd and run["trace"]["stream"] == "raw, compressed in L0"
            assert [ln for ln in T.open_lines(cap.path)] == [MAP, free(1.2, 1, P), LATER] and cap.lines == 3
            r5 = cap.checker.finish().rules["R5"] if cap.checker else None
            assert r5 is not None and (r5.checked, r5.violations) == (1, 1)
