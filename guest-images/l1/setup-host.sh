#!/bin/sh
# Prepare L1 as the KVM host under pressure.  Knobs arrive as environment variables (set by L0):
#   SWAP_KIND=disk|zram SWAP_MB THP=never|always|madvise MGLRU=y|n TDP_MMU=Y|N KSM=0|1 PAGE_CLUSTER SWAPPINESS
#   KVM_INTEL_PARAMS="eptad=Y|N pml=Y|N" (kvm_intel module parameters; empty: the module's defaults)
#   DELAY_KO DELAY_PARAMS (scenario delays: insmod of the kvmdelay module; empty: none)
# Prints key=value facts for L0 to record.  Any failure exits non-zero with a message on stderr.
set -e
fail() { echo "setup-host: $*" >&2; exit 1; }

# zswap's load path dirties the folio and hides the race: it must be off (also off on the cmdline).
[ -w /sys/module/zswap/parameters/enabled ] && echo N > /sys/module/zswap/parameters/enabled
echo "$THP" > /sys/kernel/mm/transparent_hugepage/enabled
if [ -e /sys/kernel/mm/lru_gen/enabled ]; then
    echo "$MGLRU" > /sys/kernel/mm/lru_gen/enabled
elif [ "$MGLRU" = y ]; then
    fail "MGLRU requested but this kernel has no /sys/kernel/mm/lru_gen"
fi
[ -e /sys/kernel/mm/ksm/run ] && echo "$KSM" > /sys/kernel/mm/ksm/run
echo "$PAGE_CLUSTER" > /proc/sys/vm/page-cluster
echo "$SWAPPINESS" > /proc/sys/vm/swappiness

case "$SWAP_KIND" in
disk)
    [ -b /dev/vda ] || fail "no virtio swap disk /dev/vda"
    mkswap /dev/vda >/dev/null
    swapon /dev/vda ;;
zram)
    modprobe zram num_devices=1
    echo "${SWAP_MB}M" > /sys/block/zram0/disksize
    mkswap /dev/zram0 >/dev/null
    swapon /dev/zram0 ;;
*) fail "unknown SWAP_KIND $SWAP_KIND" ;;
esac

vendor=$(grep -m1 vendor_id /proc/cpuinfo | sed 's/.*: //')
if grep -qw svm /proc/cpuinfo; then mod=kvm_amd; tdp=npt
elif grep -qw vmx /proc/cpuinfo; then mod=kvm_intel; tdp=ept
else fail "L1 CPU has neither svm nor vmx: no nested virtualization"; fi
params=""
if [ "$mod" = kvm_intel ]; then params="$KVM_INTEL_PARAMS"
elif [ -n "$KVM_INTEL_PARAMS" ]; then
    fail "kvm_intel parameters ($KVM_INTEL_PARAMS) asked for, but L1 is $vendor ($mod)"
fi
modprobe kvm tdp_mmu="$TDP_MMU" || fail "modprobe kvm failed"
# shellcheck disable=SC2086  # $params: one word per parameter
modprobe "$mod" nested=1 $params || fail "modprobe $mod nested=1 $params failed"
[ -c /dev/kvm ] || fail "/dev/kvm missing after modprobe $mod"
for kv in $params; do  # a parameter the CPU cannot honour reads back otherwise (no EPT A/D bits: eptad=N)
    got=$(cat "/sys/module/$mod/parameters/${kv%%=*}" 2>/dev/null || echo absent)
    [ "$got" = "${kv#*=}" ] || fail "$mod ${kv%%=*}=${kv#*=} asked for, but L1's $mod has ${kv%%=*}=$got"
done
# Delays that widen race windows (scenario delays; kvmdelay.ko written by L0, built against this kernel): after
# kvm is loaded (its functions are what the kprobes name), before the workload.
# A probe may name alternatives, a|b (one scenario for kernels whose function names differ, e.g. 7.2's
# kvm_mmu_faultin_pfn and 6.12's kvm_faultin_pfn): the first that this kernel's kallsyms has is probed.
# grep -F reads kallsyms fast under TCG (trace-start.sh measured awk alone at 4.2 s); awk keeps exact names.
pick_symbol() {
    for name in $(echo "$1" | tr '|' ' '); do
        grep -w -F "$name" /proc/kallsyms | awk -v n="$name" '$3 == n { found = 1 } END { exit !found }' &&
            { echo "$name"; return 0; }
    done
    return 1
}
if [ -n "$DELAY_PARAMS" ]; then
    [ -r "$DELAY_KO" ] || fail "delays asked for, but no delay module at $DELAY_KO"
    resolved=""
    for word in $DELAY_PARAMS; do
        if [ "${word%%=*}" = func ]; then
            funcs=""
            for alt in $(echo "${word#func=}" | tr ',' ' '); do
                f=$(pick_symbol "$alt") || fail "delays (kvmdelay): no function $alt in this kernel (/proc/kallsyms)"
                funcs="${funcs:+$funcs,}$f"
            done
            word="func=$funcs"
        fi
        resolved="${resolved:+$resolved }$word"
    done
    DELAY_PARAMS=$resolved
    # shellcheck disable=SC2086  # $DELAY_PARAMS: one word per module parameter
    insmod "$DELAY_KO" $DELAY_PARAMS || fail "insmod kvmdelay $DELAY_PARAMS failed: $(dmesg | grep kvmdelay | tail -n 2)"
    echo "delays=$DELAY_PARAMS"
fi
nested=$(cat /sys/module/$mod/parameters/nested)
tdp_on=$(cat /sys/module/$mod/parameters/$tdp)
echo "cpu_vendor=$vendor"
echo "kvm_module=$mod"
echo "nested=$nested"
echo "tdp=$tdp_on"
echo "kvm_params=$(for p in ept eptad pml npt; do f=/sys/module/$mod/parameters/$p
    [ -r "$f" ] && printf '%s=%s ' "$p" "$(cat "$f")"; done)"
echo "tdp_mmu=$(cat /sys/module/kvm/parameters/tdp_mmu)"
echo "clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
echo "thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled)"
echo "mglru=$(cat /sys/kernel/mm/lru_gen/enabled 2>/dev/null || echo absent)"
echo "zswap=$(cat /sys/module/zswap/parameters/enabled 2>/dev/null || echo absent)"
echo "swap=$(tail -n +2 /proc/swaps | awk '{print $1":"$3}')"
echo "taint=$(cat /proc/sys/kernel/tainted)"
