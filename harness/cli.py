"""Command-line parsing only: each subcommand hands off to its stage module."""
from __future__ import annotations

import argparse
import errno
import sys

from harness.errors import EXIT_INFRA, EXIT_INPUT, HarnessError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="kvm-dirty-harness: prove that a KVM memory-management patch loses no guest writes")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="boot L1 -> L2 under L1's KVM, run the ledger under reclaim, judge it")
    r.add_argument("scenario", nargs="?", default=None, help="scenario YAML (default: scenarios/default.yaml)")
    k = r.add_mutually_exclusive_group()
    k.add_argument("--kernel", help="kernel folder with bzImage and modules/, or debian:VERSION (7.2, 7.2.13-1…; default: Debian's prebuilt 6.12)")
    k.add_argument("--build", help="KERNEL.yaml: build (or take from cache) and boot that kernel")
    r.add_argument("--upto", type=int, default=None, help="with --build: apply only the first N patches")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--duration", type=float, default=None, help="wall-clock limit for the whole run, seconds")
    r.add_argument("--results", default=None, help="results root (default: results/)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario knob (YAML value), may repeat")

    b = sub.add_parser("build", help="build a patched kernel from KERNEL.yaml")
    b.add_argument("kernel_yaml")
    b.add_argument("--upto", type=int, default=None)
    b.add_argument("--bench", action="store_true", help="measure full, cache-hit and incremental build times")

    c = sub.add_parser("console", help="console-log oracle")
    csub = c.add_subparsers(dest="console_cmd", required=True)
    cc = csub.add_parser("classify", help="classify the kernel crash (if any) in a console log")
    cc.add_argument("file")
    cc.add_argument("--json", action="store_true")

    d = sub.add_parser("doctor", help="print the host's capabilities and what to install or enable")
    d.add_argument("--require-kvm", action="store_true",
                   help="exit 3, one line per failed check, unless this host can run nested KVM (KVM module, "
                        "/dev/kvm, nested=1, VT-x/AMD-V, packages, free disk; no kernel needed)")
    d.add_argument("--no-probe", action="store_true",
                   help="skip the optional boot probe (run only when a kernel is cached)")

    rp = sub.add_parser("report", help="re-render summary/JUnit for a results folder, or judge it again")
    rp.add_argument("run_dir")
    rp.add_argument("--rejudge", action="store_true",
                    help="judge the stored run again from its files alone; exit 0 when it agrees, 1 when not")
    rp.add_argument("--json", action="store_true", help="with --rejudge: print the comparison as JSON")

    _add_scale_commands(sub)
    return p


def _add_scale_commands(sub) -> None:
    """The many-run commands: matrix, merge, reproduce, bisect, lava-job, remote."""
    m = sub.add_parser("matrix", help="run a matrix of kernels x knobs x seeds")
    m.add_argument("matrix_yaml")
    m.add_argument("--results", default=None)
    m.add_argument("--list", action="store_true", help="print one line per cell (stable id, name) and exit")
    m.add_argument("--shard", default=None, metavar="I/N", help="run only shard I of N (cells by sorted id)")
    m.add_argument("--jobs", default="1", metavar="N|auto", help="cells run at once (auto: cores and memory)")

    mg = sub.add_parser("merge", help="join shard folders of one matrix into one matrix folder")
    mg.add_argument("shard_dirs", nargs="+", metavar="DIR")
    mg.add_argument("--results", default=None, help="results root for the merged folder (default: results/)")

    rep = sub.add_parser("reproduce", help="re-run a results folder's case with the same inputs")
    rep.add_argument("run_dir")
    rep.add_argument("--tries", type=int, default=1, help="rerun N times; run.json gets the reproduction rate")

    bi = sub.add_parser("bisect", help="find the first patch of a series that gives a finding")
    bi.add_argument("kernel_yaml")
    bi.add_argument("scenario", nargs="?", default=None, help="scenario YAML (default: scenarios/default.yaml)")
    bi.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario knob")
    bi.add_argument("--repeats", type=int, default=3, help="clean runs that make a step good (default 3)")
    bi.add_argument("--seed", type=int, default=None)
    bi.add_argument("--results", default=None, help="results root (default: results/)")

    lj = sub.add_parser("lava-job", help="write a LAVA job that runs a matrix (or a shard) on an x86 device")
    lj.add_argument("matrix_yaml")
    lj.add_argument("--shard", default=None, metavar="I/N", help="run only shard I of N (harness matrix --shard)")
    lj.add_argument("--out", default=None, metavar="FILE", help="write the job here (default: stdout)")
    lj.add_argument("--artifacts-url", default=None, metavar="URL",
                    help="base URL of the host images, kernel tarballs (by key) and result uploads (default: a "
                         "placeholder to fill in)")
    lj.add_argument("--repo", default=None, help="git URL the device clones (default: origin, else URL/"
                                                 "kvm-dirty-harness.git)")

    rm = sub.add_parser("remote", help="run a case or a matrix shard on another machine over SSH, pull results",
                        description="HOST is user@host:port or an ssh_config alias.  After the action: its own "
                                    "arguments and -F FILE, --identity FILE, --known-hosts FILE, "
                                    "--accept-new-host-key, --remote-repo PATH, --results DIR "
                                    "(`harness remote HOST run --help`).")
    rm.add_argument("host")
    rm.add_argument("action", choices=["run", "matrix"])
    rm.add_argument("args", nargs=argparse.REMAINDER, help="the action's arguments and the remote options")


def reap_descendants() -> None:
    """After an interrupt nothing we started may outlive us: a make of the configure step, a tar, a QEMU."""
    from harness.util import reap_descendants as reap
    reap(wait_s=10)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from harness.vm.qemu import install_signal_handlers
    install_signal_handlers()  # SIGTERM/SIGHUP unwind like Ctrl-C, whatever the command is doing
    try:
        if args.cmd == "run":
            from harness.scenario.run import cli_run
            return cli_run(args)
        if args.cmd == "build":
            from harness.kernel.build import cli_build
            return cli_build(args)
        if args.cmd == "console":
            from harness.oracles.console import cli_classify
            return cli_classify(args.file, as_json=args.json)
        if args.cmd == "doctor":
            from harness.vm.doctor import cli_doctor
            return cli_doctor(require_kvm=args.require_kvm, probe=not args.no_probe)
        if args.cmd == "report" and args.rejudge:
            from harness.report.rejudge import cli_rejudge
            return cli_rejudge(args.run_dir, as_json=args.json)
        if args.cmd == "report":
            from harness.report.results import cli_report
            return cli_report(args.run_dir)
        if args.cmd == "matrix":
            from harness.fleet.matrix.cli import cli_matrix
            return cli_matrix(args)
        if args.cmd == "merge":
            from harness.fleet.merge import cli_merge
            return cli_merge(args)
        if args.cmd == "reproduce":
            from harness.report.reproduce import cli_reproduce
            return cli_reproduce(args.run_dir, args.tries)
        if args.cmd == "bisect":
            from harness.fleet.bisect import cli_bisect
            return cli_bisect(args)
        if args.cmd == "lava-job":
            from harness.fleet.lava import cli_lava_job
            return cli_lava_job(args)
        if args.cmd == "remote":
            from harness.fleet.remote import cli_remote
            return cli_remote(args)
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        reap_descendants()
        print("harness: error: interrupted (SIGINT/SIGTERM); partial results, if any, stay .incomplete",
              file=sys.stderr)
        return EXIT_INFRA
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"harness: error: no space left on device writing {e.filename or 'results'}", file=sys.stderr)
        return EXIT_INFRA
    return EXIT_INPUT
