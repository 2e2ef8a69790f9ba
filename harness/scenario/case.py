"""The scenario stage: one case, images → L1 boot → L1 set-up → the guest (a Linux L2 + ledger under reclaim, or
the micro-guest VMM's choreographies: harness.guest) → end-of-run facts.

`run_case` fills a `CaseEvidence` and returns it whatever happens (an error that ends the case early is one of
its facts); it decides nothing: the judge (harness.oracles.judge) does.
"""
from __future__ import annotations

import errno
import json
from itertools import islice
import tempfile
import time
import traceback
from pathlib import Path

from harness.config import Scenario
from harness.errors import HarnessError, InfraError
from harness.evidence import CaseEvidence, Finding, infra
from harness.guest import guest_for
from harness.guest.base import Guest
from harness.guest.contract import MICRO_STEPS_FILE
from harness.images.delay import L1_PATH as DELAY_KO_L1
from harness.images.delay import build_delay_module
from harness.oracles import judge as judge_mod
from harness.oracles import ledger as ledger_oracle
from harness.oracles import micro as micro_oracle
from harness.oracles.trace import open_lines
from harness.report.progress import RunProgress
from harness.report.results import atomic_write
from harness.scenario import l1host
from harness.vm import qemu
from harness.vm.accel import choose_accel, host_tsc_khz, l1_clock_cmdline
from harness.vm.l1boot import boot_l1
from harness.vm.ssh import L1Shell, key_cmdline_arg, make_run_key

RECORDED = ("l1-console.log", "l1-dmesg.log", "l2-console.log", "l2-result.log", "l2-qemu.log", "vmstat.csv",
            "trace.txt.gz", "ledger.jsonl", "micro-out.log", "micro-err.log", MICRO_STEPS_FILE)


def new_evidence(s: Scenario, case: str, patch: str | None) -> CaseEvidence:
    return CaseEvidence(case=case, guest=s.guest, l2_fault=s.l2_fault, **guest_for(s).evidence_knobs(),
                        patch_under_test=patch,
                        info={"accel": {}, "timings": {}, "kernel_meta": {}})


def run_case(s: Scenario, meta: dict, cdir: Path, t0: float, ev: CaseEvidence, log: RunProgress,
             wall=None) -> CaseEvidence:
    """Fill `ev` (created by the caller, so an interrupt still leaves what was measured).  `log` prints events
    and shows progress; `wall()` says why the wall-clock watchdog ended the run, or None."""
    try:
        _boot_and_drive(s, meta, cdir, t0, ev, log)
    except HarnessError as e:
        ev.error = _error_finding(str(e), wall)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        ev.error = infra("L0", "no-space", f"no space left on device writing {e.filename or 'the results'}")
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a harness bug must still leave a complete, honest results folder
        ev.error = infra("L0", "harness-bug", repr(e), excerpt=traceback.format_exc()[-2000:])
    finally:
        qemu.reap_all()
        ev.files = {name: name for name in RECORDED if (cdir / name).exists()}
    return ev


def _error_finding(msg: str, wall) -> Finding:
    why = wall() if wall else None
    if why:
        return infra("L0", "timeout", f"{why}; it was waiting on: {msg}")
    return infra("L0", "error", msg)


def _boot_and_drive(s: Scenario, meta: dict, cdir: Path, t0: float, ev: CaseEvidence, log) -> None:
    info, timings = ev.info, ev.info["timings"]
    kdir = Path(meta["dir"])
    accel = choose_accel(kdir / "bzImage")
    info["accel"] = accel.to_json()
    ev.accel_mode = accel.mode
    log(f"accelerator: {accel.mode} ({accel.reason})")
    t = time.monotonic()
    log.phase("images")
    guest = guest_for(s)
    l1img, info["images"] = guest.l1_image(kdir, meta["release"])
    info["images"]["l1_bytes"] = l1img.initramfs.stat().st_size
    delay_ko = build_delay_module(kdir) if s.delays else None  # shipped to L1 over SSH, loaded by setup-host.sh
    if delay_ko:
        info["images"]["delay_module"] = delay_ko.name
    timings["images_s"] = round(time.monotonic() - t, 2)
    with tempfile.TemporaryDirectory(prefix="harness-swap-") as swapdir:
        swap = None
        if s.swap.kind == "disk":
            swap = Path(swapdir) / "swap.img"
            with open(swap, "wb") as f:
                f.truncate(s.swap.size_mb << 20)
        key = make_run_key()
        # no_timer_check: under TCG on a saturated host the boot-time IO-APIC timer check can miss its ticks and
        # panic L1 ("IO-APIC + timer doesn't work!", seen at load 16): a check of the emulator, not of the kernel
        cmdline = " ".join(w for w in ("console=ttyS0 loglevel=5 panic=-1 oops=panic no_timer_check zswap.enabled=0",
                                       f"transparent_hugepage={s.thp}",
                                       l1_clock_cmdline(accel.mode, host_tsc_khz()),
                                       key_cmdline_arg(key), s.l1.cmdline.strip()) if w)
        spec = qemu.VMSpec(kdir / "bzImage", l1img.initramfs, cmdline, accel.qemu_args, s.l1.memory_mb,
                           s.l1.cpus, swap)
        t_guest = time.monotonic()
        log.phase("L1 boot")
        vm = _boot_l1(spec, cdir, s, accel, ev)
        log(f"L1 up in {timings['l1_boot_s']} s; SSH on 127.0.0.1:{vm.ssh_port}")
        sh = L1Shell(vm.ssh_port, key, l1img.host_key_pub, default_timeout=s.timeouts.l1_cmd_s * accel.timeout_scale)
        try:
            timings["ssh_s"] = round(sh.connect(60 * accel.timeout_scale, vm.alive), 2)
            if delay_ko:
                sh.run(f"cat > {DELAY_KO_L1}", stdin=delay_ko.read_bytes())
            _drive_l1(s, guest, ev, cdir, sh, vm, accel.timeout_scale, t0 + s.timeouts.total_s, t0, log)
        except InfraError as e:
            state = qemu.process_state(vm)  # name the cause when L1 itself is stopped or gone
            raise InfraError(f"{state}: {e}" if state else str(e)) from None
        finally:
            sh.close()
            vm.qmp_quit()
            timings["guest_s"] = round(time.monotonic() - t_guest, 2)  # L1 QEMU start → L1 gone


def _boot_l1(spec, cdir: Path, s: Scenario, accel, ev: CaseEvidence) -> qemu.QemuVM:
    def started(vm: qemu.QemuVM) -> None:
        ev.l1.qemu_cmd = vm.cmd

    vm, boot_s = boot_l1(spec, cdir, accel, s.timeouts.l1_boot_s * accel.timeout_scale, on_start=started,
                         on_retry=lambda msg: ev.info.setdefault("infra_events", []).append(msg))
    ev.info["timings"]["l1_boot_s"] = round(boot_s, 2)
    return vm


def _setup_l1(s: Scenario, ev: CaseEvidence, sh: L1Shell, scale: float, log) -> None:
    log.phase("L1 set-up")
    t = time.monotonic()
    facts = l1host.parse_kv(sh.run(f"{l1host.env_prefix(l1host.setup_env(s))} /harness/setup-host.sh",
                                   timeout=120 * scale))
    ev.info["timings"]["l1_setup_s"] = round(time.monotonic() - t, 2)
    l1 = ev.l1
    l1.cmdline = sh.run("cat /proc/cmdline").strip()
    yes = ("1", "Y")
    for name in ("cpu_vendor", "kvm_module", "clocksource", "thp", "mglru", "zswap", "swap", "kvm_params", "delays"):
        setattr(l1, name, facts.get(name))
    l1.nested, l1.tdp, l1.tdp_mmu = (facts.get(k) in yes for k in ("nested", "tdp", "tdp_mmu"))
    l1.taint_before = int(facts.get("taint", "0") or 0)
    ev.info["accel"]["l1_cpu_vendor"] = l1.cpu_vendor
    log(f"L1: {l1.kvm_module} nested={l1.nested} tdp={l1.tdp} tdp_mmu={l1.tdp_mmu} swap={l1.swap} thp={l1.thp}")
    if not l1.nested:
        raise InfraError(f"{l1.kvm_module} loaded without nested support")


def _drive_l1(s: Scenario, guest: Guest, ev: CaseEvidence, cdir: Path, sh: L1Shell, vm, scale: float,
              deadline: float, t0: float, log) -> None:
    _setup_l1(s, ev, sh, scale, log)
    before = l1host.parse_vmstat(sh.run("cat /proc/vmstat"))
    tracer = None
    if s.trace.enabled:
        from harness.scenario.tracing import TraceCapture
        # A Linux L2's capture is armed when its init starts, not before its boot: per-fault kprobes (create-time
        # rules) doubled L2's boot under TCG (22.6 s -> 49.9 s, measured), and the ledger's pages are not touched
        # before its start.  The micro-guest's is armed before it starts: it finds within a second.
        tracer = TraceCapture(sh, s, cdir, {"kernel": ev.info["kernel_meta"], "l1": ev.l1.to_json()},
                              gfn_range=guest.trace_gfn_range(),
                              armed_at="before-start" if guest.arm_trace_before_start else "l2-init")
        if guest.arm_trace_before_start:
            tracer.start()
    t_l2 = time.monotonic()
    sh.run(guest.start_command(), timeout=60 * scale)
    log(guest.started_message())
    log.phase("L2 boot" if guest.kind == "linux" else "guest start")
    mon = l1host.Monitor(sh, s, cdir / guest.files.stream_local, cdir / "vmstat.csv", scale, t0, log.ledger,
                         on_l2_up=tracer.start if tracer and not guest.arm_trace_before_start else None,
                         l1_state=lambda: qemu.process_state(vm), on_sample=log.sample, files=guest.files,
                         settle_s=guest.settle_s, sample_s=guest.sample_s)
    try:
        mon.run(t_l2, deadline)
    except InfraError:
        if tracer:  # L1 stopped answering: the trace that reached L0 is still judged (R5 sees the race's end there)
            tracer.stop()
            ev.trace_findings = [Finding(**f) for f in tracer.judge(None)]
            ev.trace, tracer = tracer.run.get("trace", {}), None
        raise
    finally:
        if tracer:
            tracer.stop()
        _monitor_facts(ev, mon, t_l2, t0)
    log.phase("collect")
    if s.delays:  # how often each delay's probe was hit and delayed (absent when L1 no longer answers)
        out, _ = sh.try_run("cat /sys/module/kvmdelay/parameters/seen /sys/module/kvmdelay/parameters/fired")
        ev.l1.delay_counts = l1host.delay_counts(out or "", len(s.delays))
    res = _collect_end(ev, guest, cdir, sh, before)
    if tracer:
        ev.trace_findings = [Finding(**f) for f in tracer.judge(res)]
        ev.trace = tracer.run.get("trace", {})


def _monitor_facts(ev: CaseEvidence, mon: l1host.Monitor, t_l2: float, t0: float) -> None:
    timings = ev.info["timings"]
    timings["l2_boot_s"] = round(mon.l2_boot_s, 2) if mon.l2_boot_s is not None else None
    timings["workload_s"] = round(time.monotonic() - t_l2 - (mon.l2_boot_s or 0), 2)
    timings["l1_ready_to_workload_s"] = round(timings.get("ssh_s", 0) + timings.get("l1_setup_s", 0)
                                              + (mon.l2_boot_s or 0), 2)
    ev.monitor = mon.events
    ev.l1.swap_peak_frac = mon.swap_peak_frac
    ev.l2.booted = mon.l2_boot_s is not None
    ev.l2.qemu_rc, ev.l2.stopped_early = mon.l2_rc, mon.stopped_early
    ev.l2.ended_at_s = round(mon.l2_end_wall - t0, 2) if mon.l2_end_wall is not None else None
    ev.first_bad_s = round(mon.first_bad_wall - t0, 2) if mon.first_bad_wall is not None else None
    ev.l2.reclaim_writes = mon.reclaim_log
    ev.l2.injected = mon.scenario.inject if mon.injected else None


def _collect_end(ev: CaseEvidence, guest: Guest, cdir: Path, sh: L1Shell, before: dict) -> ledger_oracle.LedgerResult:
    """End-of-run state from L1.  A fact that cannot be read is recorded as unavailable (an infra finding).
    Returns the ledger as recorded (the trace oracle joins its bad pages with their timelines)."""
    got: dict[str, str] = {}
    missing = []
    for name, cmd in (("vmstat", "cat /proc/vmstat"), ("taint", "cat /proc/sys/kernel/tainted"),
                      ("memory.events", f"cat {guest.files.cgroup}/memory.events"), ("swaps", "cat /proc/swaps"),
                      ("dmesg", "dmesg"), *guest.collect_commands().items()):
        out, why = sh.try_run(cmd)
        if out is None:
            missing.append(name)
        else:
            got[name] = out
    if missing:
        ev.unavailable.append(f"not collected from L1 ({sh.broken or 'command failed'}): {', '.join(missing)}")
    if "vmstat" in got:
        delta = l1host.vmstat_delta(before, l1host.parse_vmstat(got["vmstat"]))
        if delta is None:
            ev.unavailable.append("L1's vmstat at the end was cut short (a counter missing or lower than at the start)")
        else:
            ev.l1.vmstat_delta = delta
    if got.get("taint", "").strip().isdigit():
        ev.l1.taint_after = int(got["taint"].strip())
    ev.l1.memory_events = l1host.parse_kv(got.get("memory.events", ""), " ")
    ev.l1.swaps = got.get("swaps")
    if "dmesg" in got:
        atomic_write(cdir / "l1-dmesg.log", got["dmesg"])
    f = guest.files
    if f.result_local and got.get(f.result_local):
        atomic_write(cdir / f.result_local, got[f.result_local])
        ev.l2.result_channel = True
    if got.get(f.log_local):
        atomic_write(cdir / f.log_local, got[f.log_local])
        ev.l2.qemu_log_tail = got[f.log_local].strip()[-200:]
    logs = judge_mod.load_logs(cdir)
    res = ledger_oracle.parse_console(judge_mod.ledger_stream(ev, logs))
    atomic_write(cdir / "ledger.jsonl", "".join(json.dumps(e) + "\n" for e in res.events))
    if guest.kind == "micro":  # the choreography's steps, on the VMM's clock and on the trace's
        trace = cdir / "trace.txt.gz"
        t0 = micro_oracle.trace_start_ts(islice(open_lines(trace), 50000)) if trace.exists() else None
        steps = micro_oracle.parse_output(logs.micro_out).events(trace_t0=t0)
        atomic_write(cdir / MICRO_STEPS_FILE, "".join(json.dumps(e) + "\n" for e in steps))
    return res
