"""`harness run`: kernel → images → L1 boot → L1 setup → L2 + ledger under reclaim → oracles → results folder."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import yaml
from rich.console import Console

from harness import __version__
from harness.config import Scenario, load_scenario
from harness.errors import EXIT_INFRA, HarnessError, InfraError, InputError
from harness.images.l1 import build_l1_image
from harness.images.l2 import build_l2_image
from harness.kernel.prebuilt import ensure_prebuilt_kernel, load_kernel_dir
from harness.oracles import ledger as ledger_oracle
from harness.paths import REPO, results_root
from harness.report.results import (VERDICT_EXIT, RunDir, atomic_write, junit_xml, now_id, reproduce_sh,
                                    summary_text, verdict_of, write_json)
from harness.scenario import l1host
from harness.vm import qemu
from harness.vm.accel import choose_accel
from harness.vm.ssh import L1Shell, key_cmdline_arg, make_run_key

err = Console(stderr=True, highlight=False)
# QEMU 7.2 multi-threaded TCG: a rare L1 boot crash while the kernel patches its own text (feasibility notes).
TCG_BOOT_FLAKE = ("Oops: int3", "sched_clock_cpu")


def tcg_l2_crash_without_evidence(run: dict, findings: list[dict]) -> str | None:
    """Under TCG, L2 crashed while nothing says a write was lost: no ledger finding, no trace rule violated, L1
    healthy.  Seen on a clean kernel (1 run in the first nightly of issue 6: L2 page-faulted on the first
    instruction of its timer interrupt entry, then recursively in exc_page_fault, until the entry stack's guard
    page), i.e. nested paging emulated by QEMU, not the L1 kernel's dirty tracking.  The run is retried once;
    a second crash is reported.  Never on KVM: on hardware an L2 crash is always evidence.  Returns the crash."""
    if run.get("accel", {}).get("mode") != "tcg":
        return None
    if any(f.get("oracle") in ("ledger", "trace") or (f.get("oracle") == "console" and f.get("layer") != "L2")
           for f in findings):
        return None
    crash = [f for f in findings if f.get("oracle") == "console" and f.get("layer") == "L2"
             and f.get("kind") not in ("died", "hang")]
    return crash[0]["title"] if crash else None


def log(msg: str) -> None:
    err.print(f"{time.strftime('%H:%M:%S')} {msg}", markup=False)


def resolve_kernel(args) -> dict:
    if getattr(args, "build", None):
        from harness.kernel.build import build_kernel
        path = build_kernel(Path(args.build), upto=args.upto)
        return load_kernel_dir(Path(path))
    if getattr(args, "kernel", None):
        p = Path(args.kernel)
        if not p.is_dir():
            raise InputError(f"kernel folder {p} does not exist")
        return load_kernel_dir(p)
    return load_kernel_dir(ensure_prebuilt_kernel())


def git_rev() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "?"
    except OSError:
        return "?"


def kernel_identity(meta: dict) -> dict:
    return {"release": meta.get("release"), "source": meta.get("source"), "base": meta.get("base"),
            "patches": meta.get("patches", []), "config_sha256": meta.get("config_sha256"),
            "dir": meta.get("dir"), "key": meta.get("key")}


def cli_run(args) -> int:
    scen_path = Path(args.scenario) if args.scenario else REPO / "scenarios/default.yaml"
    overrides = list(args.set)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.duration is not None:
        overrides.append(f"timeouts.total_s={args.duration}")
    scenario = load_scenario(scen_path, overrides)  # bad input fails here, before any results folder exists
    meta = resolve_kernel(args)
    kernel_argv = (["--kernel", str(Path(meta["dir"]).resolve())] if meta.get("source") != "debian-prebuilt" else [])
    root = Path(args.results) if args.results else results_root()
    run = execute(scenario, meta, root, scen_path.read_text(), kernel_argv, overrides)
    return VERDICT_EXIT.get(run["verdict"], EXIT_INFRA)


def execute(s: Scenario, meta: dict, root: Path, scenario_yaml: str = "", kernel_argv: list[str] | None = None,
            overrides: list[str] | None = None, case: str = "default") -> dict:
    """One case, end to end.  Returns run.json's content; the folder is complete unless interrupted."""
    qemu.install_signal_handlers()
    t0 = time.monotonic()
    rd = RunDir(root, now_id(s.name, s.seed))
    cdir = rd.case(case)
    run: dict = {"schema": 1, "run_id": rd.run_id, "verdict": "infra-error", "scenario": s.model_dump(),
                 "scenario_yaml": scenario_yaml, "overrides": overrides or [],
                 "kernel": kernel_identity(meta), "accel": {}, "l1": {}, "l2": {}, "ledger": {}, "findings": [],
                 "trace": {}, "timings": {},
                 "versions": {"harness": __version__, "harness_git": git_rev(), "python": platform.python_version()},
                 "host": {"machine": platform.machine(), "cpus": os.cpu_count()}}
    timings = run["timings"]
    findings: list[dict] = run["findings"]
    interrupted = False
    log(f"run {rd.run_id}: kernel {meta.get('release')} ({meta.get('source')})")
    try:
        for attempt in (1, 2):
            _pipeline(s, meta, run, cdir, timings, findings, t0)
            # an injected L2 fault (l2_fault) is meant to crash: never retried
            crash = (tcg_l2_crash_without_evidence(run, findings) if attempt == 1 and s.l2_fault == "none"
                     else None)
            if not crash:
                break
            log(f"L2 crashed under TCG with no lost write and no trace violation ({crash}): retrying once")
            run.setdefault("infra_events", []).append(
                f"attempt 1: L2 crashed under TCG with no lost write and no trace violation ({crash}); its files "
                f"are in cases/{case}/attempt1/; retried")
            _set_aside(cdir, "attempt1")
            findings.clear()
            timings.pop("first_finding_s", None)  # attempt 1's crash is not this run's finding
            timings["attempt1_s"] = round(time.monotonic() - t0, 2)
            for k in ("l1", "l2", "ledger", "trace"):
                run[k] = {}
    except KeyboardInterrupt:
        interrupted = True
        findings.append({"oracle": "infra", "layer": "L0", "kind": "interrupted", "title": "run interrupted"})
    except HarnessError as e:
        findings.append({"oracle": "infra", "layer": "L0", "kind": "error", "title": str(e)})
    except Exception as e:  # a harness bug must still leave a complete, honest results folder
        findings.append({"oracle": "infra", "layer": "L0", "kind": "harness-bug", "title": repr(e),
                         "excerpt": traceback.format_exc()[-2000:]})
    finally:
        qemu.reap_all()
    timings["total_s"] = round(time.monotonic() - t0, 2)
    run["verdict"] = verdict_of(findings)
    run["interrupted"] = interrupted
    # every real finding names the change it convicts (the top patch of the series, or none)
    patches = run["kernel"].get("patches") or []
    top = patches[-1].get("subject") if patches else "none (unpatched kernel)"
    for f in findings:
        if f.get("oracle") != "infra":
            f.setdefault("patch", top)
    write_json(cdir / "findings.json", findings)
    atomic_write(rd.path / "reproduce.sh", reproduce_sh((kernel_argv or []), run))
    os.chmod(rd.path / "reproduce.sh", 0o755)
    atomic_write(rd.path / "summary.txt", summary_text(run))
    atomic_write(rd.path / "junit.xml", junit_xml(run))
    write_json(rd.path / "run.json", run)
    if not interrupted:
        rd.finish()
    run["path"] = str(rd.path)
    sys.stdout.write(summary_text(run))
    print(f"verdict: {run['verdict']}  results: {rd.path}")
    return run


def _set_aside(cdir: Path, name: str) -> None:
    """Move a case's files into cdir/name (a retried attempt stays in the results folder, as evidence)."""
    (cdir / name).mkdir(exist_ok=True)
    for p in list(cdir.iterdir()):
        if p.is_file():
            os.replace(p, cdir / name / p.name)


def _pipeline(s: Scenario, meta: dict, run: dict, cdir: Path, timings: dict, findings: list[dict], t0: float) -> None:
    kdir = Path(meta["dir"])
    accel = choose_accel(kdir / "bzImage")
    run["accel"] = accel.to_json()
    log(f"accelerator: {accel.mode} ({accel.reason})")
    scale = accel.timeout_scale
    deadline = t0 + s.timeouts.total_s
    t = time.monotonic()
    l2img = build_l2_image()
    # L2 is only the guest: it always runs Debian's prebuilt 6.12 (memory hotplug for its data node, NUMA), so
    # that every kernel under test (L1) faces the same guest.
    l2_kdir = ensure_prebuilt_kernel()
    l1img = build_l1_image(kdir, meta["release"], l2img, l2_kdir / "bzImage")
    timings["images_s"] = round(time.monotonic() - t, 2)
    run["images"] = {"l1": l1img.key, "l2": l2img.key, "l1_modules": l1img.modules,
                     "l2_kernel": load_kernel_dir(l2_kdir).get("release")}

    with tempfile.TemporaryDirectory(prefix="harness-swap-") as swapdir:
        swap = None
        if s.swap.kind == "disk":
            swap = Path(swapdir) / "swap.img"
            with open(swap, "wb") as f:
                f.truncate(s.swap.size_mb << 20)
        key = make_run_key()
        cmdline = (f"console=ttyS0 loglevel=5 panic=-1 oops=panic zswap.enabled=0 transparent_hugepage={s.thp} "
                   f"{key_cmdline_arg(key)} {s.l1.cmdline}").strip()
        spec = qemu.VMSpec(kdir / "bzImage", l1img.initramfs, cmdline, accel.qemu_args, s.l1.memory_mb,
                           s.l1.cpus, swap)
        sh = None
        for attempt in (1, 2):
            vm = qemu.QemuVM(spec, cdir)
            t_guest = time.monotonic()
            vm.start()
            run["l1"]["qemu_cmd"] = vm.cmd
            try:
                timings["l1_boot_s"] = round(vm.wait_console("HARNESS-L1: ready", s.timeouts.l1_boot_s * scale,
                                                             fail_markers=("Kernel panic",)), 2)
                break
            except InfraError:
                text = vm.console_text()
                vm.kill()
                if attempt == 1 and accel.mode == "tcg" and all(m in text for m in TCG_BOOT_FLAKE):
                    run.setdefault("infra_events", []).append("L1 boot hit the QEMU 7.2 TCG int3 flake; retried")
                    os.replace(cdir / "l1-console.log", cdir / "l1-console.attempt1.log")
                    continue
                raise
        log(f"L1 up in {timings['l1_boot_s']} s; SSH on 127.0.0.1:{vm.ssh_port}")
        sh = L1Shell(vm.ssh_port, key, l1img.host_key_pub)
        try:
            timings["ssh_s"] = round(sh.connect(60 * scale, vm.alive), 2)
            _in_l1(s, run, cdir, timings, findings, sh, vm, scale, deadline, t0)
        finally:
            sh.close()
            vm.qmp_quit()
            timings["guest_s"] = round(time.monotonic() - t_guest, 2)  # L1 QEMU start → L1 gone
    # Console oracle over everything we kept (L1 serial, L1 dmesg, L2 serial).
    findings.extend(_console_findings(cdir))


def _in_l1(s, run, cdir, timings, findings, sh: L1Shell, vm, scale, deadline, t0) -> None:
    t = time.monotonic()
    env = l1host.setup_env(s)
    facts = l1host.parse_kv(sh.run(f"{l1host.env_prefix(env)} /harness/setup-host.sh", timeout=120 * scale))
    timings["l1_setup_s"] = round(time.monotonic() - t, 2)
    l1 = run["l1"]
    l1["cmdline"] = sh.run("cat /proc/cmdline").strip()
    l1.update({"cpu_vendor": facts.get("cpu_vendor"), "kvm_module": facts.get("kvm_module"),
               "nested": facts.get("nested") in ("1", "Y"), "tdp": facts.get("tdp") in ("1", "Y"),
               "tdp_mmu": facts.get("tdp_mmu") in ("1", "Y"), "clocksource": facts.get("clocksource"),
               "thp": facts.get("thp"), "mglru": facts.get("mglru"), "zswap": facts.get("zswap"),
               "swap": facts.get("swap"), "taint_before": int(facts.get("taint", "0") or 0)})
    run["accel"]["l1_cpu_vendor"] = facts.get("cpu_vendor")
    log(f"L1: {l1['kvm_module']} nested={l1['nested']} tdp={l1['tdp']} tdp_mmu={l1['tdp_mmu']} "
        f"swap={l1['swap']} thp={l1['thp']}")
    if not l1["nested"]:
        raise InfraError(f"{l1['kvm_module']} loaded without nested support")
    before = l1host.parse_vmstat(sh.run("cat /proc/vmstat"))

    tracer = None
    if s.trace.enabled:
        from harness.scenario.tracing import TraceCapture
        tracer = TraceCapture(sh, s, cdir, run)
        # Armed when L2's init starts, not before L2's boot: per-fault kprobes (create-time rules) doubled L2's
        # boot under TCG (22.6 s -> 49.9 s, measured), and the ledger's pages are not touched before its start.

    env2 = {"L2_MEM_MB": str(s.l2_memory_mb), "L2_CPUS": str(s.l2_cpus), "MEMORY_MAX_MB": str(s.memory_max_mb),
            "BACKEND": s.memory_backend, "L2_APPEND": l1host.l2_append(s),
            "KERNEL_NODE_MB": str(s.l2_kernel_node_mb)}
    t_l2 = time.monotonic()
    sh.run(f"{l1host.env_prefix(env2)} /harness/start-l2.sh", timeout=60 * scale)
    log(f"L2 started: {s.l2_memory_mb} MiB RAM ({s.memory_backend}), cgroup memory.max={s.memory_max_mb} MiB, "
        f"ledger {s.ledger.size_mb} MiB x {s.ledger.rounds} rounds")

    def progress(ev: dict) -> None:
        if ev["ev"] in ("round", "done", "selftest"):
            log(f"ledger: {json.dumps({k: v for k, v in ev.items()})}")
        elif ev["ev"] == "bad" and mon.ledger.bad_total <= 3:
            log(f"ledger: BAD PAGE {ev}")

    mon = l1host.Monitor(sh, s, cdir / "l2-console.log", cdir / "vmstat.csv", scale, progress,
                         on_l2_up=tracer.start if tracer else None)
    try:
        mon.run(t_l2, deadline)
    finally:
        if tracer:
            tracer.stop()
    timings["l2_boot_s"] = round(mon.l2_boot_s, 2) if mon.l2_boot_s is not None else None
    timings["workload_s"] = round(time.monotonic() - t_l2 - (mon.l2_boot_s or 0), 2)
    timings["l1_ready_to_workload_s"] = round(timings.get("ssh_s", 0) + timings.get("l1_setup_s", 0)
                                              + (mon.l2_boot_s or 0), 2)
    findings.extend(mon.infra + mon.l2_findings)
    l1["swap_peak_frac"] = mon.swap_peak_frac
    run["l2"] = {"qemu_rc": mon.l2_rc, "reclaim_writes": mon.reclaim_log, "stopped_early": mon.stopped_early}
    if mon.first_bad_wall is not None:
        timings["first_finding_s"] = round(mon.first_bad_wall - t0, 2)

    # End-of-run state from L1.
    after = l1host.parse_vmstat(sh.run("cat /proc/vmstat"))
    l1["vmstat_delta"] = l1host.vmstat_delta(before, after)
    l1["taint_after"] = int(sh.run("cat /proc/sys/kernel/tainted").strip() or 0)
    l1["memory_events"] = l1host.parse_kv(sh.run("cat /sys/fs/cgroup/l2/memory.events", check=False), " ")
    l1["swaps"] = sh.run("cat /proc/swaps", check=False)
    atomic_write(cdir / "l1-dmesg.log", sh.run("dmesg", timeout=60, check=False))
    l2_qemu_log = sh.run("cat /run/l2-qemu.log 2>/dev/null", check=False)
    if l2_qemu_log:
        atomic_write(cdir / "l2-qemu.log", l2_qemu_log)

    # Oracles.
    text = (cdir / "l2-console.log").read_text(errors="replace")
    res = ledger_oracle.parse_console(text)
    oom_ended = l2_ended_by_oom(text, l1.get("memory_events") or {})
    atomic_write(cdir / "ledger.jsonl", "".join(json.dumps(e) + "\n" for e in res.events))
    run["ledger"] = res.totals()
    run["ledger"]["first_bad_s"] = res.first_bad_t
    findings.extend(ledger_oracle.findings(res))
    if s.ledger.selftest_pages:
        run["ledger"]["selftest"] = res.selftest
        for p in ledger_oracle.check_selftest(res):
            findings.append({"oracle": "infra", "layer": "L2", "kind": "selftest-failed", "title": p})
    if not res.done and mon.l2_boot_s is None and not mon.l2_findings and not mon.infra:
        findings.append({"oracle": "infra", "layer": "L2", "kind": "no-start",
                         "title": f"L2's QEMU ended (exit {mon.l2_rc}) before L2 booted: "
                                  + (cdir / "l2-qemu.log").read_text(errors="replace").strip()[-200:]
                                  if (cdir / "l2-qemu.log").exists() else f"L2's QEMU ended (exit {mon.l2_rc})"})
    elif not res.done and oom_ended:
        # An OOM kill ended L2 early: in L2 (the ledger does not fit its RAM) or in L1 (the cgroup killed L2's
        # QEMU: memory.max too tight for this backend).  A setup failure, not evidence against the kernel.
        findings.append({"oracle": "infra", "layer": "L2", "kind": "oom-ended-run",
                         "title": f"an OOM kill ended L2 before the ledger finished ({res.rounds_done}/{res.rounds} "
                                  "rounds): the scenario's memory sizes do not fit"})
    elif not res.done and not mon.l2_findings and not mon.infra and not mon.stopped_early:
        # After L2 booted, dying early is evidence: under a broken L1, L2's own memory loses writes too.
        findings.append({"oracle": "console", "layer": "L2", "kind": "died",
                         "title": f"L2 ended before the ledger finished (QEMU exit {mon.l2_rc}, "
                                  f"{res.rounds_done}/{res.rounds} rounds)"})
    if l1["taint_after"] != l1["taint_before"]:
        findings.append({"oracle": "console", "layer": "L1", "kind": "taint",
                         "title": f"L1 kernel taint changed {l1['taint_before']} -> {l1['taint_after']} during the run"})
    if tracer:
        findings.extend(tracer.judge(res))
    if ("first_finding_s" not in timings and mon.l2_end_wall is not None and not res.done
            and not oom_ended):
        timings["first_finding_s"] = round(mon.l2_end_wall - t0, 2)  # L2 died: the death is the first finding
    # Sensitivity: a pass counts only if L2's memory really went through swap and the exposed path ran.
    vd = l1["vmstat_delta"]
    if res.done and not findings:
        weak = [f"{k}={vd.get(k, 0)} < {need}" for k, need in (("pswpout", s.thresholds.min_pswpout),
                                                                ("swap_ra_hit", s.thresholds.min_swap_ra_hit))
                if vd.get(k, 0) < need]
        if mon.swap_peak_frac > 0.5:
            weak.append(f"swap peaked {mon.swap_peak_frac:.0%} full (> 50 % drops the swap cache and hides the race)")
        if weak:
            findings.append({"oracle": "infra", "layer": "L1", "kind": "insufficient-pressure",
                             "title": "the pressure failed, so this run could not have caught a lost write: "
                                      + ", ".join(weak)})


def l2_ended_by_oom(l2_console: str, memory_events: dict) -> bool:
    """Did an OOM kill end L2: L2's own OOM killer (its console), or L1's cgroup killing L2's QEMU
    (memory.events oom_kill of the l2 cgroup)?"""
    try:
        cgroup_kills = int(memory_events.get("oom_kill", 0) or 0)
    except ValueError:
        cgroup_kills = 0
    return cgroup_kills > 0 or "Out of memory: Killed process" in l2_console


def _console_findings(cdir: Path) -> list[dict]:
    try:
        from harness.oracles.console import classify_all
    except ImportError:
        return []
    out = []
    seen = set()
    for layer, name in (("L1", "l1-console.log"), ("L1", "l1-dmesg.log"), ("L2", "l2-console.log")):
        p = cdir / name
        if not p.exists():
            continue
        for rep in classify_all(p.read_text(errors="replace")):
            if rep.kind == "none" or (layer, rep.title) in seen:
                continue
            seen.add((layer, rep.title))
            out.append({"oracle": "infra" if getattr(rep, "infra", False) else "console", "layer": layer,
                        "kind": rep.kind, "title": rep.title, "source": name,
                        "excerpt": "\n".join(rep.excerpt.splitlines()[:60])})
    return out
