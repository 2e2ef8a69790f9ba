"""Command-line parsing only: each subcommand hands off to its stage module."""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys

from harness.errors import EXIT_INFRA, EXIT_INPUT, HarnessError, InputError

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a tool killed by the signal would report (`harness ... | head`)


class _Parser(argparse.ArgumentParser):
    """A bad command line is one line and exit 2 (the usage is one `--help` away)."""

    def error(self, message: str):
        where = self.prog.partition(" ")[2]
        self.exit(EXIT_INPUT, f"harness: error: {where + ': ' if where else ''}{message} (see {self.prog} --help)\n")


def _count(text: str) -> int:
    """A number of patches, repeats or tries: an integer >= 0."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 (got '{text}')") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 (got {n})")
    return n


def _positive(text: str) -> int:
    """A number of tries or repeats: an integer >= 1."""
    n = _count(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be 1 or more (got 0)")
    return n


def _parser() -> argparse.ArgumentParser:
    from harness.cli_help import DESCRIPTION, EPILOG
    p = _Parser(prog="harness", description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="boot L1 -> L2 under L1's KVM, run the ledger under reclaim, judge it")
    r.add_argument("scenario", nargs="?", default=None,
                   help="a scenario's name (harness list: default, ...) or a YAML path from the current directory "
                        "(default: default)")
    k = r.add_mutually_exclusive_group()
    k.add_argument("--kernel", help="kernel folder with bzImage and modules/, or debian:VERSION (7.2, 7.2.13-1…; default: Debian's prebuilt 6.12)")
    k.add_argument("--build", nargs="?", const="@tree", metavar="KERNEL.yaml",
                   help="KERNEL.yaml: build (or take from cache) and boot that kernel; with --tree and no value: "
                        "build that working tree as it is (uncommitted changes included), out of tree, in the cache")
    _add_tree_options(r)
    r.add_argument("--upto", type=_count, default=None, help="with --build: apply only the first N patches")
    r.add_argument("--seed", type=_count, default=None,
                   help="seed of the run's random choices (reclaim schedule, ledger writes); default: the "
                        "scenario's (1).  Same seed, same inputs")
    r.add_argument("--duration", type=float, default=None, help="wall-clock limit for the whole run, seconds")
    r.add_argument("--results", default=None, help="results root (default: results/)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario knob (YAML value), may repeat")
    r.add_argument("--json", action="store_true",
                   help="print run.json (plus its folder as \"path\") as one JSON object on stdout; the summary "
                        "and progress go to stderr")

    b = sub.add_parser("build", help="build a patched kernel from KERNEL.yaml")
    b.add_argument("kernel_yaml")
    b.add_argument("--upto", type=_count, default=None,
                   help="apply only the first N patches of the series (0: the base alone; default: the "
                        "KERNEL.yaml's upto, else all)")
    b.add_argument("--bench", action="store_true", help="measure full, cache-hit and incremental build times")

    c = sub.add_parser("console", help="console-log oracle")
    csub = c.add_subparsers(dest="console_cmd", required=True)
    cc = csub.add_parser("classify", help="classify the kernel crash (if any) in a console log")
    cc.add_argument("file")
    cc.add_argument("--json", action="store_true",
                    help="print the classification (kind, layer, title, excerpt lines) as JSON instead of text")

    d = sub.add_parser("doctor", help="print the host's capabilities and what to install or enable")
    d.add_argument("--require-kvm", action="store_true",
                   help="exit 3, one line per failed check, unless this host can run nested KVM (KVM module, "
                        "/dev/kvm, nested=1, VT-x/AMD-V, packages, free disk; no kernel needed)")
    d.add_argument("--no-probe", action="store_true",
                   help="skip the optional boot probe (run only when a kernel is cached)")
    d.add_argument("--json", action="store_true",
                   help="print the checks as one JSON object (name, ok, value, fix, required; failed; ok)")

    ls = sub.add_parser("list", help="the scenarios and matrices of scenarios/, by name, with their purpose")
    ls.add_argument("--json", action="store_true", help="one JSON array: name, kind, path, purpose")

    rp = sub.add_parser("report", help="re-render summary/JUnit for a results folder, or judge it again")
    rp.add_argument("run_dir")
    rp.add_argument("--rejudge", action="store_true",
                    help="judge the stored run again from its files alone; exit 0 when it agrees, 1 when not")
    rp.add_argument("--json", action="store_true", help="with --rejudge: print the comparison as JSON")

    _add_scale_commands(sub)
    _add_git_commands(sub)
    return p


def _add_tree_options(r) -> None:
    """A developer's own kernel (harness.kernel.tree): a source tree, built or to build, or a bzImage + modules."""
    r.add_argument("--tree", default=None, metavar="PATH",
                   help="a kernel source tree: built (bzImage, .config, modules) it is booted as is, its .config "
                        "checked; with --build the working tree is built in the cache (the tree is never written)")
    r.add_argument("--defconfig", default=None, metavar="NAME",
                   help="with --tree --build: start from this defconfig of the tree instead of its .config "
                        "(minimal: x86_64_defconfig + kconfigs/minimal-l1.config, the quickest build)")
    r.add_argument("--base", default=None, metavar="REF",
                   help="with --tree: the commits REF..HEAD are the change under test (named in run.json)")
    r.add_argument("--modules", default=None, metavar="DIR|TARBALL",
                   help="with --kernel BZIMAGE: its modules (a modules_install folder or a tarball of one; "
                        "any compression)")


def _add_git_commands(sub) -> None:
    """A developer's commit range: bisect --git lives on the bisect parser; check --git here."""
    ch = sub.add_parser("check", help="build and judge every commit of a range, one row each (patchcheck)")
    ch.add_argument("range", metavar="BASE..HEAD", help="the commits after BASE up to HEAD, oldest first")
    ch.add_argument("scenario", nargs="?", default=None, help="a scenario's name or YAML path (default: micro, the micro-guest: seconds a step)")
    ch.add_argument("--git", required=True, metavar="PATH", help="the developer's git tree (never written)")
    ch.add_argument("--defconfig", default=None, metavar="NAME",
                    help="start from this defconfig (minimal: the quickest) instead of PATH/.config")
    ch.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario knob")
    ch.add_argument("--repeats", type=_count, default=1, help="clean runs that make a commit good (default 1)")
    ch.add_argument("--seed", type=_count, default=None)
    ch.add_argument("--results", default=None, help="results root (default: results/)")


def _add_scale_commands(sub) -> None:
    """The many-run commands: matrix, merge, reproduce, bisect, lava-job, remote."""
    m = sub.add_parser("matrix", help="run a matrix of kernels x knobs x seeds")
    m.add_argument("matrix_yaml", help="a matrix's name (harness list: nightly, ...) or a YAML path")
    m.add_argument("--results", default=None,
                   help="results root: the matrix folder (matrix-<time>-<name>/) goes there (default: results/)")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario knob in every cell (after the cell's own variant), may repeat")
    m.add_argument("--list", action="store_true", help="print one line per cell (stable id, name) and exit")
    m.add_argument("--shard", default=None, metavar="I/N", help="run only shard I of N (cells by sorted id)")
    m.add_argument("--jobs", default="1", metavar="N|auto", help="cells run at once (auto: cores and memory)")

    mg = sub.add_parser("merge", help="join shard folders of one matrix into one matrix folder")
    mg.add_argument("shard_dirs", nargs="+", metavar="DIR")
    mg.add_argument("--results", default=None, help="results root for the merged folder (default: results/)")

    rep = sub.add_parser("reproduce", help="re-run a results folder's case with the same inputs")
    rep.add_argument("run_dir")
    rep.add_argument("--tries", type=_positive, default=1, help="rerun N times; run.json gets the reproduction rate")

    bi = sub.add_parser("bisect", help="find the first patch of a series (or commit of a range: --git) that "
                                       "gives a finding")
    bi.add_argument("kernel_yaml", nargs="?", default=None,
                    help="KERNEL.yaml of the series; with --git: the scenario (name or path) instead")
    bi.add_argument("--git", default=None, metavar="PATH",
                    help="bisect the commits of this git tree between --good and --bad (in a clone in the cache: "
                         "the tree, its checkout and branch are never touched)")
    bi.add_argument("--good", default=None, metavar="REF", help="with --git: a commit without the finding")
    bi.add_argument("--bad", default=None, metavar="REF", help="with --git: a commit with it (default HEAD)")
    bi.add_argument("--defconfig", default=None, metavar="NAME",
                    help="with --git: start from this defconfig (minimal: the quickest) instead of PATH/.config")
    bi.add_argument("scenario", nargs="?", default=None, help="a scenario's name or YAML path (default: micro, the micro-guest: seconds a step)")
    bi.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario knob")
    bi.add_argument("--repeats", type=_positive, default=3, help="clean runs that make a step good (default 3)")
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


def resolve_inputs(args) -> None:
    """Scenario and matrix references by name or path (harness.catalog), and options that need another one."""
    from harness import catalog
    from harness.kernel.tree import fix_args
    fix_args(args)          # --tree PATH --build [SCENARIO], bisect --git's scenario, options that go together
    if args.cmd in ("run", "bisect", "check") and hasattr(args, "scenario"):
        # A bisect or a range check judges many kernels, each maybe several times: the micro-guest's verdict takes
        # seconds and catches every mutant the Linux L2 catches (docs/microguest.md), so it is their default.
        default = "micro" if args.cmd in ("bisect", "check") else "default"
        path, args.scenario_ref = catalog.resolve_kind(args.scenario, "scenario", default=default)
        args.scenario = str(path)
    if args.cmd in ("matrix", "lava-job"):
        path, _ = catalog.resolve_kind(args.matrix_yaml, "matrix")
        args.matrix_yaml = str(path)
    if args.cmd == "run" and args.upto is not None and not args.build:
        raise InputError("--upto N needs --build KERNEL.yaml (it applies the first N patches of that series)")


@contextlib.contextmanager
def stdout_to_stderr():
    """While a --json command works, everything it (or a child process) prints goes to stderr: stdout carries the
    one JSON object, printed after."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (`harness ... | head`): no traceback, and nothing more to write at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    from harness.vm.qemu import install_signal_handlers
    install_signal_handlers()  # SIGTERM/SIGHUP unwind like Ctrl-C, whatever the command is doing
    as_json = getattr(args, "json", False) and args.cmd == "run"
    try:
        resolve_inputs(args)
        if args.cmd == "run" and as_json:
            from harness.scenario.run import run_from_args
            with stdout_to_stderr():
                run = run_from_args(args)
            print_json(run)
            from harness.report.results import VERDICT_EXIT
            return VERDICT_EXIT.get(run["verdict"], EXIT_INFRA)
        if args.cmd == "run":
            from harness.scenario.run import cli_run
            return cli_run(args)
        if args.cmd == "list":
            from harness.catalog import cli_list
            return cli_list(as_json=args.json)
        if args.cmd == "build":
            from harness.kernel.build import cli_build
            return cli_build(args)
        if args.cmd == "console":
            from harness.oracles.console import cli_classify
            return cli_classify(args.file, as_json=args.json)
        if args.cmd == "doctor":
            from harness.vm.doctor import cli_doctor
            return cli_doctor(require_kvm=args.require_kvm, probe=not args.no_probe, as_json=args.json)
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
        if args.cmd in ("check", "bisect") and (args.cmd == "check" or args.git):
            from harness.fleet.gitrange import cli_git
            return cli_git(args)
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
        if as_json:  # a script still reads one object: why, and the exit code
            print_json({"verdict": "input-error" if e.exit_code == EXIT_INPUT else "infra-error", "error": str(e),
                        "exit": e.exit_code})
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
