"""harness remote: HOST parsing, argument building, remote paths, kernel manifests and the no-secrets check."""
import json
import subprocess

import paramiko
import pytest

from harness.fleet import remote
from harness.cli import _parser
from harness.errors import InputError


@pytest.mark.parametrize("spec,host,user,port,label", [
    ("root@127.0.0.1:2222", "127.0.0.1", "root", 2222, "root@127.0.0.1:2222"),
    ("box", "box", None, None, "box"),
    ("lab-box.example.org", "lab-box.example.org", None, None, "lab-box.example.org"),
    ("me@box", "box", "me", None, "me@box"),
    ("box:22", "box", None, 22, "box:22"),
    ("ci@[2001:db8::1]:2200", "2001:db8::1", "ci", 2200, "ci@[2001:db8::1]:2200"),
])
def test_parse_host(spec, host, user, port, label):
    h = remote.parse_host(spec)
    assert (h.host, h.user, h.port) == (host, user, port)
    assert h.label() == label


@pytest.mark.parametrize("spec", ["", "a@b@c", "host:port", "host:0", "host:70000", "user@", "@host", "a b",
                                  "host:22:33"])
def test_bad_host_is_input_error(spec):
    with pytest.raises(InputError, match="HOST"):
        remote.parse_host(spec)


def test_cli_hands_everything_after_the_action_to_remote():
    a = _parser().parse_args(["remote", "me@box:2200", "run", "s.yaml", "--identity", "k", "--set", "seed=3",
                              "-h"])
    assert (a.cmd, a.host, a.action) == ("remote", "me@box:2200", "run")
    assert a.args == ["s.yaml", "--identity", "k", "--set", "seed=3", "-h"]


def test_split_args_run_keeps_harness_flags_and_takes_remote_options():
    ns, passed = remote.split_args("run", [
        "s.yaml", "--set", "ledger.rounds=3", "--identity", "~/.ssh/lab", "--seed", "5", "-F", "cfg",
        "--known-hosts", "kh", "--accept-new-host-key", "--remote-repo", "/srv/h", "--results", "out",
        "--set", "thp=always", "--kernel", "kdir", "--future-flag=1"])
    assert ns.target == "s.yaml" and ns.identity == ["~/.ssh/lab"] and ns.ssh_config == "cfg"
    assert ns.known_hosts == "kh" and ns.accept_new_host_key and ns.remote_repo == "/srv/h"
    assert ns.results == "out" and ns.kernel == "kdir"
    assert passed == ["--seed", "5", "--set", "ledger.rounds=3", "--set", "thp=always", "--future-flag=1"]


def test_split_args_defaults_and_matrix():
    ns, passed = remote.split_args("matrix", ["m.yaml", "--shard", "2/4", "--jobs", "auto", "--list"])
    assert ns.target == "m.yaml" and ns.remote_repo == "~/kvm-dirty-harness" and not ns.accept_new_host_key
    assert ns.identity == [] and ns.results is None
    assert passed == ["--shard", "2/4", "--jobs", "auto", "--list"]
    with pytest.raises(InputError, match="matrix YAML is required"):
        remote.split_args("matrix", ["--shard", "1/2"])
    with pytest.raises(SystemExit) as e:  # argparse's own exit 2, with its usage line
        remote.split_args("run", ["--kernel", "k", "--build", "b.yaml"])
    assert e.value.code == 2


@pytest.mark.parametrize("path,quoted", [
    ("~/kvm-dirty-harness", '"$HOME"/kvm-dirty-harness'),
    ("~", '"$HOME"'),
    ("/srv/my repo", "'/srv/my repo'"),
    ("~/a;rm -rf x", '"$HOME"/\'a;rm -rf x\''),
])
def test_remote_quoting(path, quoted):
    assert remote.rq(path) == quoted
    out = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, text=True,
                         env={"HOME": "/h"}).stdout
    assert out == path.replace("~", "/h", 1)


def test_mirror_of_the_remote_checkout_keeps_relative_references(tmp_path):
    """A pushed matrix sits in a symlink copy of the remote checkout: its scenario and ../kernels/ resolve as
    in the checkout, and the pushed files' own places are left free for the pushed bytes."""
    repo = tmp_path / "remote repo"
    for f in ("scenarios/m.yaml", "scenarios/default.yaml", "scenarios/other.yaml", "kernels/a.yaml",
              ".git/HEAD", "scenarios/sub/x.yaml", "README.md"):
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).write_text(f)
    tree = tmp_path / "tmp/tree"
    script = remote.mirror_script(str(repo), str(tree), ["scenarios/m.yaml", "scenarios/sub/x.yaml"])
    subprocess.run(["bash", "-c", script], check=True)
    assert not (tree / "scenarios").is_symlink() and not (tree / "scenarios/sub").is_symlink()
    assert not (tree / "scenarios/m.yaml").exists() and not (tree / "scenarios/sub/x.yaml").exists()
    for f in ("kernels", ".git", "README.md", "scenarios/default.yaml", "scenarios/other.yaml"):
        assert (tree / f).is_symlink() and (tree / f).resolve() == (repo / f).resolve(), f
    assert (tree / "scenarios/../kernels/a.yaml").resolve() == (repo / "kernels/a.yaml").resolve()
    assert sorted(p.name for p in tree.iterdir()) == [".git", "README.md", "kernels", "scenarios"]


def test_in_checkout(tmp_path):
    (tmp_path / "scenarios").mkdir()
    assert remote.in_checkout(tmp_path / "scenarios/../scenarios/m.yaml", tmp_path) == "scenarios/m.yaml"
    with pytest.raises(InputError, match="outside the checkout"):
        remote.in_checkout(tmp_path.parent / "elsewhere.yaml", tmp_path)


def test_kernel_manifest_hash_and_remote_sums(tmp_path):
    k = tmp_path / "k"
    (k / "modules/lib/modules/6.12").mkdir(parents=True)
    (k / "bzImage").write_bytes(b"kernel")
    (k / "modules/lib/modules/6.12/a.ko").write_bytes(b"mod")
    (k / "modules/lib/modules/6.12/build").symlink_to("/nonexistent")
    man = remote.manifest(k)
    assert set(man) == {"bzImage", "modules/lib/modules/6.12/a.ko"}
    sums = subprocess.run("find . -type f -print0 | xargs -0r sha256sum", shell=True, cwd=k, capture_output=True,
                          text=True).stdout
    assert remote.parse_sums(sums) == man
    h = remote.artifact_hash(man)
    assert len(h) == 16 and h == remote.artifact_hash(dict(reversed(list(man.items()))))
    (k / "bzImage").write_bytes(b"kernel2")
    assert remote.artifact_hash(remote.manifest(k)) != h


def test_no_secrets_check_finds_private_key_material(tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    secrets = remote.key_material([key, tmp_path / "absent", key.with_suffix(".pub")])
    assert secrets and all(len(s) >= 16 for s in secrets)
    assert all(s not in key.with_suffix(".pub").read_bytes() for s in secrets)  # the public key is no secret
    run = tmp_path / "run"
    (run / "cases/default").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"verdict": "pass"}))
    (run / "cases/default/l1-console.log").write_bytes(b"boot ok\n" + key.with_suffix(".pub").read_bytes())
    assert remote.secret_hits(run, secrets) == []
    leak = run / "cases/default/leak.txt"
    leak.write_bytes(b"noise " + key.read_bytes().splitlines()[2] + b" noise")
    assert remote.secret_hits(run, secrets) == [leak]
    with pytest.raises(Exception, match="private key material"):
        remote.record([run], {"host": "h"}, secrets)
    assert not leak.exists() and json.loads((run / "remote.json").read_text()) == {"host": "h"}


def test_an_ssh_config_alias_and_strict_host_keys(tmp_path):
    """-F FILE is read like ssh -F: the alias gives host, user, port and identity; known_hosts is loaded and
    an unknown key is refused, not auto-added (fabric's default)."""
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host lab\n  HostName 192.0.2.7\n  User bob\n  Port 2202\n  IdentityFile {tmp_path}/labkey\n")
    kh = tmp_path / "known_hosts"
    key = paramiko.Ed25519Key.from_private_key_file(_keygen(tmp_path / "hostkey"))
    kh.write_text(f"[192.0.2.7]:2202 ssh-ed25519 {key.get_base64()}\n")
    ns, _ = remote.split_args("run", ["-F", str(cfg), "--known-hosts", str(kh)])
    c = remote.connection(remote.parse_host("lab"), ns)
    assert (c.host, c.user, c.port) == ("192.0.2.7", "bob", 2202)
    assert f"{tmp_path}/labkey" in c.connect_kwargs["key_filename"]
    assert c.client._system_host_keys.lookup("[192.0.2.7]:2202")["ssh-ed25519"] == key
    policy = c.client._policy
    other = paramiko.Ed25519Key.from_private_key_file(_keygen(tmp_path / "other"))
    with pytest.raises(InputError, match="unknown host .*--accept-new-host-key"):
        policy.missing_host_key(c.client, "[192.0.2.8]:2202", other)
    ns2, _ = remote.split_args("run", ["-F", str(cfg), "--known-hosts", str(kh), "--accept-new-host-key"])
    c2 = remote.connection(remote.parse_host("me@lab:2222"), ns2)
    assert (c2.user, c2.port) == ("me", 2222)
    c2.client._policy.missing_host_key(c2.client, "[192.0.2.8]:2222", other)
    assert kh.read_text().splitlines()[-1] == f"[192.0.2.8]:2222 ssh-ed25519 {other.get_base64()}"


def _keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return str(path)
