#!/bin/sh
# Build the micro-guest VMM: build.sh OUTPUT
# One gcc call (static, like the ledger), then a check that the guest code (section guest_text, copied into
# the guest at GPA 0x10000) references nothing outside itself: no RIP-relative data, no calls or jumps out.
set -e
[ $# -eq 1 ] || { echo "usage: build.sh OUTPUT" >&2; exit 2; }
out=$1
src=$(cd "$(dirname "$0")" && pwd)
gcc -static -O2 -Wall -pthread -o "$out" "$src/microvm.c" "$src/kvm.c" "$src/host.c" "$src/chor.c" "$src/race.c" \
    "$src/guest.c"
command -v objdump >/dev/null || exit 0  # the check needs binutils; the build itself does not
set -- $(objdump -h "$out" | awk '$2 == "guest_text" { print $3, $4 }')
[ $# -eq 2 ] || { echo "build.sh: no guest_text section in $out" >&2; exit 1; }
start=$((0x$2)); end=$((0x$2 + 0x$1))
dis=$(objdump -d -j guest_text "$out")
if echo "$dis" | grep -q '%rip'; then
    echo "build.sh: the guest code uses RIP-relative data:" >&2; echo "$dis" | grep '%rip' >&2; exit 1
fi
for t in $(echo "$dis" | sed -n 's/.*\t\(call\|jmp\|j[a-z]*\) *\([0-9a-f]*\) <.*/\2/p'); do
    if [ $((0x$t)) -lt $start ] || [ $((0x$t)) -ge $end ]; then
        echo "build.sh: the guest code calls or jumps out of its section (to 0x$t)" >&2; exit 1
    fi
done
