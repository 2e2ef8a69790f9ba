"""`harness remote HOST run|matrix …`: a case or a matrix shard on another machine (bare metal with KVM) over
SSH: inputs pushed, the remote checkout's harness run with its output streamed here, its results folder pulled
back into the local results root, its exit code kept.

The connection is the user's own (fabric): ~/.ssh/config or -F FILE, the agent, default identities or
--identity.  Host keys are checked against the system and user known_hosts; an unknown host is refused unless
--accept-new-host-key (then recorded, like StrictHostKeyChecking=accept-new).  Nothing secret is written into
a results folder: remote.json is built from an allow-list, and the pulled folder is scanned for key material.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import fabric
import paramiko
import yaml
from fabric.runners import Remote

from harness.errors import EXIT_INFRA, InfraError, InputError
from harness.paths import REPO, results_root
from harness.util import change_identity, commit_of

REMOTE_KERNELS = ".cache/kvm-dirty-harness/remote-kernels"  # under the remote $HOME
PASS_THROUGH = {"run": ("--upto", "--seed", "--duration", "--set"), "matrix": ("--shard", "--jobs")}
DEFAULT_KEYS = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_dsa")


@dataclass(frozen=True)
class Host:
    host: str
    user: str | None = None
    port: int | None = None

    def label(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{h}{f':{self.port}' if self.port else ''}"


def parse_host(spec: str) -> Host:
    """`user@host:port`, `host`, `[v6addr]:port` or an ssh_config alias (user and port then come from it)."""
    m = re.fullmatch(r"(?:([^@\s:/]+)@)?(\[[0-9A-Fa-f:.]+\]|[^@\s:/\[\]]+)(?::(\d{1,5}))?", spec)
    if not m:
        raise InputError(f"bad HOST '{spec}': expected user@host:port, host or an ssh_config alias")
    user, host, port = m.groups()
    if port is not None and not 0 < int(port) < 65536:
        raise InputError(f"bad HOST '{spec}': port {port} out of range")
    return Host(host.strip("[]"), user, int(port) if port else None)


def option_parser(action: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"harness remote HOST {action}", allow_abbrev=False,
                                description="other flags are passed through to the remote harness verbatim")
    p.add_argument("target", nargs="?", help="scenario YAML (run) or matrix YAML (matrix): a local file is pushed")
    p.add_argument("-F", dest="ssh_config", help="ssh_config file instead of ~/.ssh/config (like ssh -F)")
    p.add_argument("--identity", action="append", default=[], help="private key file, may repeat")
    p.add_argument("--known-hosts", help="user known_hosts file (default ~/.ssh/known_hosts)")
    p.add_argument("--accept-new-host-key", action="store_true", help="record an unknown host's key, then go on")
    p.add_argument("--remote-repo", default="~/kvm-dirty-harness", help="the project's checkout on HOST")
    p.add_argument("--results", help="local results root the results are pulled into (default: results/)")
    if action == "run":
        k = p.add_mutually_exclusive_group()
        k.add_argument("--kernel", help="local kernel folder: pushed into the remote's cache (by hash)")
        k.add_argument("--build", help="KERNEL.yaml of this checkout: built on the remote from its checkout")
    for flag in PASS_THROUGH[action]:
        p.add_argument(flag, action="append", default=[])
    return p


def split_args(action: str, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Remote options and path arguments out; the harness's own flags kept (known ones re-emitted in order)."""
    ns, rest = option_parser(action).parse_known_args(argv)
    passed = []
    for flag in PASS_THROUGH[action]:
        for v in getattr(ns, flag[2:].replace("-", "_")):
            passed += [flag, v]
    if action == "matrix" and not ns.target:
        raise InputError("harness remote HOST matrix: a matrix YAML is required")
    return ns, passed + rest


def rq(path: str) -> str:
    """Quote a remote path for the remote shell, keeping a leading ~ as the remote $HOME."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (("/" + shlex.quote(path[2:])) if path[2:] else "")
    return shlex.quote(path)


def in_checkout(path: Path, local_repo: Path = REPO) -> str:
    """A local file of this checkout → its path relative to the checkout (the remote has the same layout)."""
    try:
        return Path(path).resolve().relative_to(local_repo.resolve()).as_posix()
    except ValueError:
        raise InputError(f"{path} is outside the checkout {local_repo}: relative references from it are "
                         "resolved against the remote checkout, so it must be inside this one") from None


def mirror_script(repo: str, dest: str, pushed: list[str]) -> str:
    """Shell that makes `dest` the remote checkout as symlinks, with real folders along the pushed files'
    paths: a pushed matrix's relative references (its scenario, ../kernels/…) resolve as in the checkout,
    and its bytes stay the local ones (a matrix's id, which `harness merge` checks, is a hash of them)."""
    dirs: dict[str, set[str]] = {}
    for p in pushed:
        parts = p.split("/")
        for i in range(len(parts)):
            dirs.setdefault("/".join(parts[:i]), set()).add(parts[i])
    out = []
    for d, skip in sorted(dirs.items()):
        src, dst = shlex.quote(f"{repo}/{d}".rstrip("/")), shlex.quote(f"{dest}/{d}".rstrip("/"))
        out.append(f"mkdir -p {dst} && for e in {src}/* {src}/.[!.]*; do case \"${{e##*/}}\" in "
                   f"{'|'.join(shlex.quote(n) for n in sorted(skip))}) continue;; esac; "
                   f"if [ -e \"$e\" ] || [ -L \"$e\" ]; then ln -s \"$e\" {dst}/; fi; done")
    return " && ".join(out)


def manifest(kdir: Path) -> dict[str, str]:
    """sha256 of every regular file of a kernel folder, by relative path (symlinks point into build trees)."""
    out = {}
    for dp, dns, fns in os.walk(kdir):
        dns.sort()
        for f in sorted(fns):
            p = Path(dp, f)
            if p.is_file() and not p.is_symlink():
                with open(p, "rb") as fh:
                    out[p.relative_to(kdir).as_posix()] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def artifact_hash(man: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{h}  {r}\n" for r, h in sorted(man.items())).encode()).hexdigest()[:16]


def parse_sums(text: str) -> dict[str, str]:
    """`sha256sum` output of `find . -type f` → {relative path: sha256}."""
    return {path: h for h, path in re.findall(r"^([0-9a-f]{64}) [ *]\./(.+)$", text, re.M)}


def key_material(paths) -> list[bytes]:
    """The body lines of the private keys in use: any of them inside a results file is a leak."""
    out = []
    for p in paths:
        try:
            data = Path(p).expanduser().read_bytes()
        except OSError:
            continue
        if b"PRIVATE KEY" in data:
            out += [ln.strip() for ln in data.splitlines() if len(ln.strip()) >= 16 and not ln.startswith(b"---")]
    return out


def secret_hits(folder: Path, secrets: list[bytes]) -> list[Path]:
    files = [p for p in sorted(Path(folder).rglob("*")) if p.is_file() and not p.is_symlink()]
    return [p for p in files if (data := p.read_bytes()) and any(s in data for s in secrets)]


def fingerprint(key: paramiko.PKey) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """RejectPolicy, or OpenSSH's accept-new: record the key in the user's known_hosts, then connect."""

    def __init__(self, accept_new: bool, user_file: Path, files: list[Path]):
        self.accept_new, self.user_file, self.files = accept_new, user_file, files  # files: for the message

    def missing_host_key(self, client, hostname, key):
        if not self.accept_new:
            raise InputError(f"unknown host {hostname}: its {key.get_name()} key {fingerprint(key)} is not in "
                             f"{' or '.join(map(str, self.files))}; verify it and re-run with "
                             "--accept-new-host-key")
        self.user_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.user_file, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        print(f"remote: recorded {hostname}'s {key.get_name()} key {fingerprint(key)} in {self.user_file}",
              file=sys.stderr)


class InterruptibleRemote(Remote):
    """Ctrl-C / SIGTERM here = SIGINT to the remote harness (which reaps its QEMUs and keeps its partial
    folder .incomplete), then its results are still pulled; a second one drops the connection."""

    def send_interrupt(self, interrupt):
        pidfile = getattr(self.context, "harness_pidfile", None)
        if not pidfile or getattr(self.context, "harness_interrupted", False):
            raise interrupt
        self.context.harness_interrupted = True
        print("remote: interrupt: stopping the remote harness (again to drop the connection)", file=sys.stderr)
        ch = self.context.transport.open_session()
        ch.exec_command(f"kill -INT $(cat {shlex.quote(pidfile)}) 2>/dev/null")


def _secure(c: fabric.Connection, ns) -> None:
    """fabric trusts any host key by default: load known_hosts and refuse (or accept-new) instead."""
    system = [Path(p).expanduser() for p in (c.ssh_config.get("globalknownhostsfile") or
                                             ["/etc/ssh/ssh_known_hosts"])]
    configured = c.ssh_config.get("userknownhostsfile")
    user = Path(ns.known_hosts or (configured[0] if configured else "~/.ssh/known_hosts")).expanduser()
    for f in system + [user]:
        if f.is_file():
            c.client.load_system_host_keys(str(f))
    c.client.set_missing_host_key_policy(KnownHostsPolicy(ns.accept_new_host_key, user, system + [user]))
    if isinstance(c.gateway, fabric.Connection):  # a ProxyJump host is checked the same way
        _secure(c.gateway, ns)


def connection(h: Host, ns) -> fabric.Connection:
    """The user's own SSH setup (ssh_config, agent, keys) with strict host keys; not opened yet."""
    if ns.ssh_config and not Path(ns.ssh_config).is_file():
        raise InputError(f"ssh_config file {ns.ssh_config} does not exist")
    for k in ns.identity:
        if not Path(k).expanduser().is_file():
            raise InputError(f"identity file {k} does not exist")
    cfg = fabric.Config(runtime_ssh_path=ns.ssh_config,
                        overrides={"runners": {"remote": InterruptibleRemote}, "timeouts": {"connect": 20}})
    kw = {"key_filename": [str(Path(k).expanduser()) for k in ns.identity]} if ns.identity else {}
    c = fabric.Connection(h.host, user=h.user, port=h.port, config=cfg, connect_kwargs=kw)
    _secure(c, ns)
    return c


def connect(h: Host, ns) -> fabric.Connection:
    c = connection(h, ns)
    try:
        c.open()
    except BaseException as e:
        c.close()  # the transport thread of a refused connection
        if isinstance(e, paramiko.BadHostKeyException):
            raise InputError(f"host key of {e.hostname} does not match known_hosts (got {fingerprint(e.key)}): "
                             "possibly a man-in-the-middle; check it, then fix known_hosts") from None
        if isinstance(e, paramiko.AuthenticationException):
            raise InputError(f"ssh authentication to {h.label()} failed ({e}); check --identity, the agent "
                             "or ~/.ssh/config") from None
        if isinstance(e, (OSError, paramiko.SSHException)):
            raise InfraError(f"cannot connect to {h.label()}: {e}") from None
        raise
    c.transport.set_keepalive(30)
    return c


def sh(c: fabric.Connection, script: str, **kw):
    """A remote command through bash -lc: the login PATH whatever the user's shell."""
    return c.run("bash -lc " + shlex.quote(script), warn=True, in_stream=False, pty=False,
                 hide=kw.pop("hide", True), **kw)


def probe(c: fabric.Connection, repo: str, label: str) -> dict:
    """The remote checkout: exists, its commit, whether it has a .venv; plus $HOME and a fresh temp folder."""
    r = sh(c, f"cd {rq(repo)} 2>/dev/null && test -f pyproject.toml || exit 20; echo @@probe; pwd -P; "
              "git rev-parse HEAD 2>/dev/null || echo '?'; "
              "git status --porcelain --untracked-files=no 2>/dev/null | head -c1 | wc -c; "
              "test -x .venv/bin/harness && echo venv || echo novenv; echo \"$HOME\"; "
              "mktemp -d \"${TMPDIR:-/tmp}/harness-remote.XXXXXX\"")
    if r.exited == 20:
        raise InputError(f"{label}: no checkout of the project at {repo} (give --remote-repo PATH)")
    lines = r.stdout.partition("@@probe\n")[2].split("\n")  # after the marker: a login shell may print first
    if r.exited != 0 or len(lines) < 6:
        raise InfraError(f"{label}: probing {repo} failed (exit {r.exited}): {r.stderr.strip()[-300:]}")
    return {"repo": lines[0], "commit": lines[1], "dirty": lines[2].strip() != "0", "venv": lines[3] == "venv",
            "home": lines[4], "tmp": lines[5]}


def local_commit() -> str:
    """This checkout's change identity (HEAD, '-dirty' when a tracked file differs)."""
    return change_identity(REPO)


def push_tar(c: fabric.Connection, dest: str, items: list[tuple[str, Path | bytes]]) -> None:
    """Files into a remote folder as one tar stream over the connection."""
    ch = c.transport.open_session()
    ch.exec_command(f"mkdir -p {shlex.quote(dest)} && tar -C {shlex.quote(dest)} -xf -")
    with ch.makefile("wb") as w, tarfile.open(fileobj=w, mode="w|") as tf:
        for arc, src in items:
            if isinstance(src, bytes):
                ti = tarfile.TarInfo(arc)
                ti.size, ti.mtime, ti.mode = len(src), int(time.time()), 0o644
                tf.addfile(ti, io.BytesIO(src))
            else:
                tf.add(src, arcname=arc, recursive=False)
    ch.shutdown_write()
    if ch.recv_exit_status() != 0:
        raise InfraError(f"pushing into {dest} failed: {ch.makefile_stderr('rb').read().decode()[-300:]}")


def remote_sums(c: fabric.Connection, rdir: str) -> dict[str, str]:
    r = sh(c, f"cd {shlex.quote(rdir)} 2>/dev/null || exit 0; find . -type f -print0 | xargs -0r sha256sum")
    return parse_sums(r.stdout)


def push_kernel(c: fabric.Connection, kdir: Path, home: str) -> dict:
    """The kernel folder into ~/.cache/kvm-dirty-harness/remote-kernels/<hash>/, only what differs by hash."""
    man = manifest(kdir)
    h = artifact_hash(man)
    rdir = f"{home}/{REMOTE_KERNELS}/{h}"
    have = remote_sums(c, rdir)
    need = [r for r, s in man.items() if have.get(r) != s]
    if need:
        push_tar(c, rdir, [(r, kdir / r) for r in need])
        after = remote_sums(c, rdir)
        if bad := [r for r in man if after.get(r) != man[r]]:
            raise InfraError(f"kernel push to {rdir}: {len(bad)} file(s) differ after the copy, e.g. {bad[0]}")
    print(f"remote: kernel {h}: {len(need)} file(s) pushed, {len(man) - len(need)} already there",
          file=sys.stderr)
    return {"hash": h, "remote_dir": rdir, "files": len(man), "pushed": len(need)}


def plan_inputs(action: str, ns) -> dict:
    """The local side of the inputs, checked before connecting: bad input costs no SSH session."""
    plan: dict = {"files": [], "mirror": [], "target": None, "build": None, "kernel": None}
    target = Path(ns.target) if ns.target else None
    if target is not None:
        what = "scenario" if action == "run" else "matrix"
        try:
            data = target.read_bytes()
            doc = yaml.safe_load(data)
        except OSError as e:
            raise InputError(f"cannot read {what} {target}: {e.strerror}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise InputError(f"malformed YAML in {target}{f' at line {mark.line + 1}' if mark else ''}: "
                             f"{getattr(e, 'problem', None) or e}") from None
        if action == "run":
            plan["files"], plan["target"] = [(f"inputs/{target.name}", data)], f"inputs/{target.name}"
        else:
            scen = target.parent / (doc.get("scenario", "default.yaml") if isinstance(doc, dict) else "default.yaml")
            if not scen.is_file():
                raise InputError(f"{target}: cannot read its scenario {scen}")
            rel = in_checkout(target)
            plan["mirror"], plan["target"] = [(rel, data), (in_checkout(scen), scen.read_bytes())], f"tree/{rel}"
    if action == "run" and ns.build:
        plan["build"] = in_checkout(Path(ns.build))
    if action == "run" and ns.kernel:
        from harness.kernel.prebuilt import load_kernel_dir
        if not Path(ns.kernel).is_dir():
            raise InputError(f"kernel folder {ns.kernel} does not exist")
        load_kernel_dir(Path(ns.kernel))
        plan["kernel"] = Path(ns.kernel)
    return plan


def stage_inputs(c: fabric.Connection, action: str, plan: dict, info: dict) -> tuple[list[str], dict | None]:
    """Push the planned inputs into the remote temp folder; returns the remote harness's leading argv."""
    tmp, argv, kernel = info["tmp"], [action], None
    if plan["mirror"]:
        if (r := sh(c, mirror_script(info["repo"], f"{tmp}/tree", [p for p, _ in plan["mirror"]]))).exited:
            raise InfraError(f"mirroring the remote checkout failed: {r.stderr.strip()[-300:]}")
        push_tar(c, f"{tmp}/tree", plan["mirror"])
    if plan["files"]:
        push_tar(c, tmp, plan["files"])
    if plan["target"]:
        argv.append(f"{tmp}/{plan['target']}")
    if plan["build"]:
        argv += ["--build", f"{info['repo']}/{plan['build']}"]
    if plan["kernel"]:
        kernel = push_kernel(c, plan["kernel"], info["home"])
        argv += ["--kernel", kernel["remote_dir"]]
    return argv, kernel


def run_remote(c: fabric.Connection, info: dict, argv: list[str]) -> int:
    """The remote harness, its output streamed here as it comes; its exit code."""
    pidfile = f"{info['tmp']}/harness.pid"
    if not info["venv"]:
        print(f"remote: no .venv in {info['repo']}: running make setup there", file=sys.stderr)
        r = sh(c, f"cd {shlex.quote(info['repo'])} && make setup", hide=False)
        if r.exited != 0:
            raise InfraError(f"remote make setup in {info['repo']} failed (exit {r.exited})")
    cmd = " ".join(shlex.quote(a) for a in argv)
    print(f"remote: {info['repo']}$ harness {cmd}", file=sys.stderr)
    c.harness_pidfile = pidfile
    old = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM here stops the remote too
    try:
        r = sh(c, f"cd {shlex.quote(info['repo'])} && echo $$ > {shlex.quote(pidfile)} && "
                  f"PYTHONUNBUFFERED=1 exec .venv/bin/harness {cmd}", hide=False)
    finally:
        signal.signal(signal.SIGTERM, old)
        c.harness_pidfile = None
    if r.exited not in (0, 1, 2, 3):
        print(f"remote: the remote harness ended with exit {r.exited} (connection lost?)", file=sys.stderr)
        return EXIT_INFRA
    return r.exited


def pull(c: fabric.Connection, rdir: str, root: Path) -> list[Path]:
    """The remote results root (tar over the connection) into the local one; returns the folders pulled."""
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".remote-pull-", dir=root))  # folders appear whole, or not at all
    try:
        ch = c.transport.open_session()
        ch.exec_command(f"mkdir -p {shlex.quote(rdir)} && tar -C {shlex.quote(rdir)} -cf - .")
        with tarfile.open(fileobj=ch.makefile("rb"), mode="r|") as tf:
            tf.extractall(stage, filter="data")
        if ch.recv_exit_status() != 0:
            raise InfraError(f"pulling {rdir} failed: {ch.makefile_stderr('rb').read().decode()[-300:]}")
        out = []
        for p in sorted(stage.iterdir()):
            dest = root / p.name
            dest = root / f"{p.name}-{stage.name[-8:]}" if dest.exists() else dest  # never onto a folder
            os.replace(p, dest)
            out.append(dest)
        return out
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def record(folders: list[Path], facts: dict, secrets: list[bytes]) -> None:
    """remote.json in each pulled folder (an allow-list of facts), then the leak check over the folder."""
    for d in folders:
        if d.is_dir():
            (d / "remote.json").write_text(json.dumps(facts, indent=2) + "\n")
            if hits := secret_hits(d, secrets):
                for p in hits:
                    p.unlink()
                raise InfraError(f"{d}: {len(hits)} file(s) held private key material (removed: "
                                 f"{', '.join(p.name for p in hits)})")


def cli_remote(args) -> int:
    host = parse_host(args.host)
    ns, passed = split_args(args.action, args.args)
    root = Path(ns.results) if ns.results else results_root()
    t0, started = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    plan = plan_inputs(args.action, ns)
    c = connect(host, ns)
    try:
        info = probe(c, ns.remote_repo, host.label())
        mine = local_commit()
        if info["commit"] != commit_of(mine):
            print(f"remote: warning: the remote checkout is at {info['commit'][:12]}, this one at {mine[:12]}: "
                  "the remote's code runs (both recorded in remote.json)", file=sys.stderr)
        try:
            argv, kernel = stage_inputs(c, args.action, plan, info)
            argv += passed + ["--results", f"{info['tmp']}/results"]
            code = run_remote(c, info, argv)
            folders = pull(c, f"{info['tmp']}/results", root)
        finally:
            try:
                sh(c, f"rm -rf -- {shlex.quote(info['tmp'])}")
            except (OSError, paramiko.SSHException):
                print(f"remote: could not remove {info['tmp']} on {host.label()}", file=sys.stderr)
        facts = {"schema": 1, "host": host.label(), "remote_repo": info["repo"], "remote_commit": info["commit"],
                 "remote_dirty": info["dirty"], "local_commit": mine, "commits_match": info["commit"] == commit_of(mine),
                 "argv": argv, "kernel": kernel, "remote_tmp": info["tmp"], "exit_code": code,
                 "started": started, "seconds": round(time.monotonic() - t0, 1)}
        keys = list(c.connect_kwargs.get("key_filename") or []) + [f"~/.ssh/{k}" for k in DEFAULT_KEYS]
        record(folders, facts, key_material(keys))
    finally:
        c.close()
    for d in folders:
        print(f"remote results: {d}")
    return code
