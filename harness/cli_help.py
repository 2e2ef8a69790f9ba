"""`harness --help`: the README's user's guide, in the README's order, short enough for a terminal."""

DESCRIPTION = """\
kvm-dirty-harness: proves that a KVM memory-management change loses no guest writes.

It boots your kernel as L1 (in QEMU), runs KVM inside it with nested paging, boots L2 under L1's KVM in a
memory-limited cgroup, swaps L2's memory out and back in while a page ledger in L2 rewrites and verifies every
page, and judges the run with three oracles: the ledger (lost, zeroed or corrupt pages), L1's ftrace stream
(which KVM dirty-marking rule broke, for which L1 pfn) and the consoles (oops, WARN, KASAN, hangs).

The two commands (from the repository, fresh Debian 12):
  make run     Debian's prebuilt 6.12 as L1 and L2, scenarios/default.yaml
  make test    unit tests + integration tests on the real nested pipeline
Exit codes, every command: 0 no finding, 1 finding, 2 bad input, 3 infrastructure."""

EPILOG = """\
Your own tree, in three commands:
  harness run --tree ~/linux [--build]          judge your tree's kernel (--build: the working tree as it is,
                                                uncommitted changes included, your .config + the harness's)
  harness bisect --git ~/linux --good v6.12 --bad HEAD   the first bad commit of a range
  harness check --git ~/linux v6.12..HEAD       every commit of a series built and judged, one row each
  Patches instead of commits: harness run --build KERNEL.yaml (a base and a series:, see kernels/*.yaml).

Reading a finding: summary.txt in the results folder opens with at most ten lines:
  verdict  FINDING (exit 1) and what was lost (pages, the first L2 gfn and the L1 pfn that held it)
  rule     the trace rule broken (R1..R5, docs/trace-oracle.md)
  change   the commit or the patches under test
  next     harness reproduce RUN, harness bisect ... filled in for this run
  then the details; reproduce.sh reruns the case on another machine from one file.

Scenarios and matrices by name: harness list; harness run default; harness matrix nightly.
For scripts: harness run --json, harness doctor --json (one JSON object on stdout, progress on stderr).

CI and bare metal: docs/ci/ (GitHub, GitLab templates), harness doctor --require-kvm,
make test-on-hardware (docs/hardware.md), harness remote HOST run|matrix, harness lava-job.
Micro-guests (no L2 kernel): docs/microguest.md.
A suspected race (a vCPU writing while reclaim runs on another CPU): harness run races [--tree ~/linux --build];
harness matrix nightly-races; docs/races.md.
Measurements (catch times, false positives, costs) and their history: docs/measurements.md."""
