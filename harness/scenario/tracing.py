"""Trace capture in L1 for the trace oracle (DESIGN §6, docs/trace-oracle.md).

`start()` arms tracefs in L1 (guest-images/l1/trace-start.sh: events + kprobes that exist, with filters) and
starts a reader thread that streams `trace_pipe` over SSH into cases/<case>/trace.txt.gz as it is produced, so
nothing large is buffered in L1.  The thread also feeds every line to the streaming checker
(harness.oracles.trace.Checker), so judging costs nothing at the end of the run.  `stop()` turns tracing off,
drains the pipe and records what the ring buffer lost.  `judge()` returns trace findings (rule violations,
rules that could not run, ledger pages joined with their trace timeline) and fills run["trace"].
"""
from __future__ import annotations

import re
import threading
import time
import zlib
from pathlib import Path
from typing import BinaryIO

from harness.guest.contract import linux_l2_gfn_range
from harness.oracles import trace as oracle
from harness.oracles.trace_spte import layout_for_kernel
from harness.vm.ssh import L1Shell, Stream

# gzip in L1: ~8x fewer bytes through dropbear's encryption, which under TCG costs L1 the CPU that L2 needs.
# trace-reader (guest-images/l1/trace-reader.c) drains trace_pipe every READ_INTERVAL_MS instead of following the
# writer event by event: a reader that keeps up cuts and silently loses events on 6.12 (docs/trace-oracle.md).
READ_INTERVAL_MS = 100
READER_CMD = f"(/harness/trace-reader {READ_INTERVAL_MS} & echo $! > /run/trace-pipe.pid; wait)"
PIPE_CMD = READER_CMD + " | { gzip -1 -c 2>/dev/null || gzip -c; }"
# The micro-guest's trace streams uncompressed (L0 compresses it): ~2 MB a run costs dropbear little, and L1's
# busybox gzip emits its output 16 KiB at a time, i.e. ~1 s of trace behind.  A race mutant often kills L1 or
# its VMM a second or two into the run: 6 of 24 such runs ended with no byte of trace at L0 (a 10-byte file), 9
# more with their trace cut at a 16 KiB block -- the frees R5 judges (measured 2026-12-06, race-pageout, 7.2
# and 6.12, race-7.2-a / race-6.12-a).
RAW_CMD = READER_CMD


def kernel_version(release: str | None) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


# The port's patch that removes the zap-time marks: a kernel carrying it marks folios dirty at SPTE creation.
CREATE_TIME_SUBJECTS = ("KVM: x86/mmu: Stop marking folios dirty when zapping or modifying SPTEs",
                        "KVM: x86/mmu: Mark folio dirty when creating a writable SPTE")


def carries_create_time_series(patches: list[dict]) -> bool:
    """Does the kernel's patch stack contain the project's create-time port (by subject, wherever the files are)?"""
    return any(p.get("subject") in CREATE_TIME_SUBJECTS for p in patches)


def choose_ruleset(requested: str, release: str | None, symbols: set[str], patched_series: bool) -> tuple[str, str]:
    """zap-time (<= 6.12: dirty marked when a dirty SPTE is zapped) or create-time (>= 6.13 / RFC-style port)."""
    if requested != "auto":
        return requested, f"set by the scenario (trace.rules={requested})"
    ver = kernel_version(release)
    if ver >= (6, 13):
        return "create-time", f"kernel {release} >= 6.13 marks folios dirty when it creates a writable SPTE"
    if "kvm_set_pfn_dirty" not in symbols and symbols:
        return "create-time", "kvm_set_pfn_dirty is gone: the kernel marks at SPTE creation"
    if patched_series:
        return "create-time", f"kernel {release} carries the project's create-time series (patches/series)"
    return "zap-time", f"kernel {release} <= 6.12 with kvm_set_pfn_dirty: dirty marked at SPTE zap"


class StreamStore:
    """trace.txt.gz as the stream arrives: L1's gzip bytes stored as they come (concatenated members included), or
    raw text compressed here with a sync flush per chunk, so the file holds all that arrived whatever ends the run.
    `put(chunk)` stores it and returns its text."""

    def __init__(self, out: BinaryIO, raw: bool):
        self.out = out
        self.unz = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if raw else None

    def put(self, chunk: bytes) -> bytes:
        if self.z is not None:
            self.out.write(self.z.compress(chunk) + self.z.flush(zlib.Z_SYNC_FLUSH))
            return chunk
        self.out.write(chunk)
        data = self.unz.decompress(chunk)
        while self.unz.eof and self.unz.unused_data:  # concatenated gzip members (gzip restarted)
            rest = self.unz.unused_data
            self.unz = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data += self.unz.decompress(rest)
        return data

    def close(self) -> None:
        if self.z is not None:
            self.out.write(self.z.flush())
            self.z = None


class TraceCapture:
    def __init__(self, sh, scenario, case_dir, run, gfn_range: tuple[int, int] | None = None,
                 armed_at: str = "l2-init"):
        """`gfn_range`: [first, limit) of the guest's data pages (the guest contract); None: the Linux L2's.
        `armed_at`: when the capture is armed (run.json trace.armed_at: the plots place the trace by it)."""
        self.gfn_range = gfn_range or linux_l2_gfn_range(scenario.l2_memory_mb, scenario.l2_kernel_node_mb)
        self.armed_at = armed_at
        self.sh = sh
        self.s = scenario
        self.case_dir = Path(case_dir)
        self.run = run
        self.path = self.case_dir / "trace.txt.gz"
        self.max_bytes = scenario.trace.max_mb << 20
        self.facts: dict[str, list[str]] = {}
        self.checker: oracle.Checker | None = None
        self.thread: threading.Thread | None = None
        self.chan: Stream | None = None
        self.bytes = 0
        self.lines = 0
        self.truncated = False
        self.error: str | None = None
        self.stopping = threading.Event()
        self.last_data = time.monotonic()
        self.stop_stats: dict[str, int] = {}
        self.t_start: float | None = None
        self.t_stop: float | None = None
        self.armed = False
        self.stream_sh: L1Shell | None = None
        self.raw = False  # the stream is uncompressed text (the micro-guest's), not L1's gzip

    # -- L1 side -----------------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.s
        gfn_min, gfn_limit = self.gfn_range  # only the guest's data pages (harness.guest.contract)
        ncpus = max(1, s.l1.cpus)
        patches = self.run.get("kernel", {}).get("patches") or []
        series = carries_create_time_series(patches)
        # Decided before arming so that the capture records only what the chosen rules need.
        pre_ruleset, _ = choose_ruleset(s.trace.rules, self.run.get("kernel", {}).get("release"), set(), series)
        env = (f"GFN_MIN={gfn_min:#x} GFN_LIMIT={gfn_limit:#x} BUF_KB={max(2048, 16384 // ncpus)} PAGE_FREE=1 "
               f"RULESET={pre_ruleset}")
        tr = self.run["trace"] = {"enabled": True, "armed_at": self.armed_at, "ruleset": None, "events": 0,
                                  "lost_events": None, "rules": {}}
        try:
            out = self.sh.run(f"{env} /harness/trace-start.sh", timeout=120)
        except Exception as e:  # tracing must never take the run down: say so and let the rules report not-run
            tr.update(enabled=False, why=f"trace-start.sh failed: {e}")
            self.checker = None
            return
        for line in out.splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                self.facts.setdefault(k.strip(), []).append(v.strip())
        installs = pre_ruleset != "zap-time" or self._keep_installs(gfn_min, gfn_limit)
        symbols = set(self.facts.get("symbol", []))
        release = self.run.get("kernel", {}).get("release") or next(iter(self.facts.get("release", [])), None)
        ruleset, why = choose_ruleset(s.trace.rules, release, symbols, series)
        vendor = "intel" if "intel" in str(self.run.get("l1", {}).get("kvm_module", "")) else "amd"
        # the SPTE bits move between versions (7.2 moved EPT's): the built kernel's own spte.h, else the table
        layout = layout_for_kernel(self.run.get("kernel") or {}, vendor, release)
        events = set(self.facts.get("event", []))
        kprobes = [k.split(":")[0] for k in self.facts.get("kprobe", [])]
        tr.update(ruleset=ruleset, ruleset_why=why, vendor=vendor, events_enabled=sorted(events),
                  kprobes=self.facts.get("kprobe", []), missing=self.facts.get("missing", []),
                  filter_failed=self.facts.get("filter_failed", []), buffer_kb=(self.facts.get("buffer_kb") or ["?"])[0],
                  file=self.path.name, spte_layout=layout.name, spte_layout_source=layout.source,
                  spte_bits=layout.bits(), spte_installs_traced=installs)
        self.checker = oracle.Checker(vendor=vendor, ruleset=ruleset,
                                      available={e.split(":", 1)[1] for e in events} | set(kprobes), layout=layout,
                                      installs_traced=installs)
        if s.memory_backend == "file":
            # the flusher writes a shared file's dirty pages back without mm_vmscan_write_folio: a later clean drop
            # is no evidence of a lost write there
            self.checker.disable("R4", "not run: shared-file guest RAM is written back by the flusher, unseen")
        if not s.tdp_mmu and ruleset == "create-time":
            # the shadow MMU's writable installs come only from kvm_mmu_set_spte, which R2/R3 are not wired to;
            # reported as not run rather than as a vacuous pass (R4 judges this MMU by the effect)
            for rule in ("R2", "R3"):
                self.checker.disable(rule, "not run: the shadow MMU's SPTE installs are not wired into this rule "
                                           "(R4 judges it)")
        self.armed = True
        # The stream gets its own SSH connection (its own dropbear process in L1): behind a busy trace channel,
        # the control connection's channel opens timed out (measured).
        stream_sh = self.sh
        try:
            extra = L1Shell(self.sh.port, self.sh.key, self.sh.host_key_pub)
            extra.connect(30)
            stream_sh = extra
        except Exception as e:
            tr["stream_connection"] = f"shared with control ({e})"
        self.stream_sh = stream_sh
        self.raw = s.guest == "micro"
        tr["stream"] = "raw, compressed in L0" if self.raw else "gzip in L1"
        self.chan = stream_sh.stream(RAW_CMD if self.raw else PIPE_CMD)
        self.t_start = time.monotonic()
        self.thread = threading.Thread(target=self._reader, name="trace-reader", daemon=True)
        self.thread.start()

    def _keep_installs(self, gfn_min: int, gfn_limit: int) -> bool:
        """R5 (a pfn freed while an SPTE maps it) needs the SPTE installs, which trace-start.sh filters out on
        zap-time kernels (the Linux L2's volume: installs are half the lines, and each costs L1 CPU).  The
        micro-guest's trace is small (~20k lines a run), so its capture keeps them: the event's filter is widened
        to the gfn range alone, before the guest starts (its capture is armed first).  True when L1 confirms it."""
        if self.s.guest != "micro" or "kvmmmu:kvm_tdp_mmu_spte_changed" not in self.facts.get("event", []):
            return False
        flt = "/sys/kernel/tracing/events/kvmmmu/kvm_tdp_mmu_spte_changed/filter"
        want = f"gfn >= {gfn_min:#x} && gfn < {gfn_limit:#x}"
        out, _ = self.sh.try_run(f"echo '{want}' > {flt} && cat {flt}", timeout=30)
        return bool(out) and "old_spte" not in out and "gfn" in out

    def _reader(self) -> None:
        stream, chk = self.chan, self.checker
        if stream is None or chk is None:  # start() opens the stream only once the checker is armed
            return
        try:
            with open(self.path, "wb") as out:
                store = StreamStore(out, self.raw)
                try:
                    buf = self._pump(stream, chk, store)
                finally:
                    store.close()  # a whole gzip file, whatever ended the stream
                if buf and not self.truncated:
                    chk.feed(buf)
        except Exception as e:  # recorded; the rules then say they could not finish
            self.error = repr(e)

    def _pump(self, stream: Stream, chk: oracle.Checker, store: StreamStore) -> bytes:
        """Store and check the stream until it ends (or L1 is gone after stop()); returns the unfinished line."""
        buf = b""
        while True:
            raw = stream.read_ready()
            if not raw:
                if stream.ended():
                    return buf
                # after stop(): the last batch, unless L1 is gone (its pipe then never ends)
                if self.stopping.is_set() and (time.monotonic() - self.last_data > 20 or self.sh.broken):
                    return buf
                time.sleep(0.02)
                continue
            self.last_data = time.monotonic()
            if self.truncated:
                continue
            data = store.put(raw)
            self.bytes += len(data)
            buf += data
            *lines, buf = buf.split(b"\n")
            self.lines += len(lines)
            for ln in lines:
                chk.feed(ln)
            if self.bytes > self.max_bytes:
                self.truncated = True
                chk.truncate()
                try:
                    self.sh.run("echo 0 > /sys/kernel/tracing/tracing_on", timeout=30, check=False)
                except Exception:
                    pass

    def stop(self) -> None:
        if not self.armed:
            return
        self.t_stop = time.monotonic()
        try:
            first = self.sh.run("/harness/trace-stop.sh", check=False)
            self.stop_stats = {k: int(v) for k, v in (ln.split("=", 1) for ln in first.splitlines() if "=" in ln)
                               if v.strip().isdigit()}
        except Exception as e:
            self.error = self.error or f"trace-stop.sh failed: {e}"
        self.stopping.set()
        if self.thread:
            self.thread.join(timeout=10 if self.sh.broken else 180)
        try:
            self.sh.run("DISARM=1 /harness/trace-stop.sh", check=False)
        except Exception:
            pass
        try:
            if self.chan is not None:
                self.chan.close()
        except Exception:
            pass
        if self.stream_sh is not None and self.stream_sh is not self.sh:
            self.stream_sh.close()

    # -- verdict -----------------------------------------------------------------------------------------
    def judge(self, ledger) -> list[dict]:
        tr = self.run.setdefault("trace", {"enabled": False, "rules": {}})
        if not self.armed or self.checker is None:
            tr.setdefault("rules", {})
            for r in oracle.RULES:
                tr["rules"].setdefault(r, {"ran": False, "events_checked": 0, "violations": 0,
                                           "why": tr.get("why", "tracing was not armed")})
            tr.setdefault("lost_events", None)
            tr.setdefault("events", 0)
            return []
        chk = self.checker
        t = time.monotonic()
        lost_l1 = bool(self.sh.broken) or ledger is None
        if lost_l1:
            chk.truncate()  # the stream ends where L1 stopped: a check waiting on later lines is unresolved, not judged
        res = chk.finish()
        lost_ring = self.stop_stats.get("overrun", 0) + self.stop_stats.get("dropped", 0)
        lost = max(lost_ring, res.lost_events)
        incomplete = []
        if lost:
            incomplete.append(f"{lost} events lost")
        if self.truncated:
            incomplete.append(f"trace cut at trace.max_mb={self.s.trace.max_mb}")
        if self.error:
            incomplete.append(f"reader error: {self.error}")
        if lost_l1:
            incomplete.append("L1 stopped answering: the trace ends where its stream did")
        bad_gfns = oracle.ledger_gfns(ledger)
        findings = oracle.findings(res, incomplete=incomplete, ledger_gfns=bad_gfns)
        if bad_gfns:
            fates: dict[int, dict] = {}
            tl = oracle.timelines(oracle.open_lines(self.path), bad_gfns, vendor=chk.vendor, fates=fates,
                                  layout=chk.layout)
            findings += oracle.timeline_findings(tl, res, incomplete, fates=fates)
        tr.update(events=res.events, lines=self.lines, bytes=self.bytes,
                  file_bytes=self.path.stat().st_size if self.path.exists() else 0,
                  lost_events=lost, lost_markers=res.lost_events, cut_events=res.cut_events, ring=self.stop_stats,
                  truncated=self.truncated, reader_error=self.error, event_counts=res.counts,
                  capture_s=round((self.t_stop or time.monotonic()) - (self.t_start or time.monotonic()), 2),
                  judge_s=round(time.monotonic() - t, 2), rules=oracle.rules_json(res, incomplete))
        return findings
