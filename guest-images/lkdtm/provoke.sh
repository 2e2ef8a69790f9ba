#!/bin/sh
# LKDTM in L1: provoke one crash type and mark it on the kernel log, for harness/fleet/lkdtm.py (sent over SSH as the
# stdin of `sh -s -- ...`; not part of the L1 image).
#   provoke.sh types        the crash types this kernel offers (one a line)
#   provoke.sh fire TYPE    "lkdtm-record: begin TYPE" to /dev/kmsg, then TYPE to provoke-crash/DIRECT from a
#                           background writer; waits up to WAIT_S (default 20) seconds for the writer to end and
#                           prints writer=exited rc=N, or writer=running (HUNG_TASK blocks, SOFTLOCKUP spins)
#   provoke.sh end TYPE     "lkdtm-record: end TYPE" to /dev/kmsg
# The kernel must not panic on an oops (L0 boots it without oops=panic), so one boot records every type.
set -u
DIR=/sys/kernel/debug/provoke-crash
fail() { echo "provoke: $*" >&2; exit 1; }
mark() { echo "<4>lkdtm-record: $1 $2" > /dev/kmsg; }
running() {   # alive and not a zombie (state is the third field of /proc/PID/stat; comm "(sh)" has no space)
    st=$(cut -d' ' -f3 /proc/$1/stat 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ]
}

[ -d /sys/kernel/debug/provoke-crash ] || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
[ -e "$DIR/DIRECT" ] || fail "no $DIR/DIRECT: kernel without CONFIG_LKDTM (kconfigs/lkdtm.config)"

case "${1:-}" in
types)
    # "Available crash types:" then one name a line
    grep -E '^[A-Z][A-Z0-9_]+$' "$DIR/DIRECT" ;;
fire)
    t=${2:?TYPE}
    grep -qx "$t" "$DIR/DIRECT" || fail "this kernel's LKDTM has no crash type $t"
    # nothing may turn a report into a panic: the next types still need the kernel
    for k in panic_on_oops panic_on_warn softlockup_panic hung_task_panic; do
        [ -w /proc/sys/kernel/$k ] && echo 0 > /proc/sys/kernel/$k
    done
    case "$t" in
    HUNG_TASK)   # reported after one to two check periods of this many seconds in D state; once (khungtaskd
                 # would repeat it every period for the task that stays blocked)
        echo 1 > /proc/sys/kernel/hung_task_warnings
        echo 2 > /proc/sys/kernel/hung_task_timeout_secs ;;
    SOFTLOCKUP)  # reported after 2 * watchdog_thresh seconds with the CPU not scheduling
        echo 1 > /proc/sys/kernel/watchdog_thresh ;;
    esac
    mark begin "$t"
    # the writer may die (oops), block for good (HUNG_TASK) or spin on its CPU (SOFTLOCKUP): never wait on it
    # unboundedly; its stdio is detached so the SSH session ends when this script does
    sh -c "echo $t > $DIR/DIRECT" </dev/null >/dev/null 2>&1 &
    pid=$!
    i=0
    while running $pid && [ $i -lt $((${WAIT_S:-20} * 10)) ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if running $pid; then
        echo writer=running
    else
        wait $pid
        echo "writer=exited rc=$?"
    fi ;;
end)
    # khungtaskd off again: the HUNG_TASK writer stays blocked for the rest of the boot
    [ "${2:-}" = HUNG_TASK ] && echo 0 > /proc/sys/kernel/hung_task_timeout_secs
    mark end "${2:?TYPE}" ;;
*)
    fail "usage: provoke.sh types | fire TYPE | end TYPE" ;;
esac
