#!/bin/sh
# Stop tracing in L1 and report what the ring buffer lost.  Prints key=value lines:
#   overrun=N dropped=N (sums over CPUs of per_cpu/cpu*/stats), entries=N (still unread)
# With DISARM=1 also disables the events and removes the kprobes (the reader must have drained first).
T=/sys/kernel/tracing
echo 0 > $T/tracing_on
# let the streaming reader drain what is left, then end it (its gzip then flushes and exits)
i=0
while [ $i -lt 40 ] && [ "$(cat $T/per_cpu/cpu*/stats | sed -n 's/^entries: //p' | awk '{s+=$1} END {print s+0}')" != 0 ]; do
    sleep 0.5; i=$((i + 1))
done
ov=0; dr=0; en=0
for f in $T/per_cpu/cpu*/stats; do
    o=$(sed -n 's/^overrun: //p' $f); d=$(sed -n 's/^dropped events: //p' $f); e=$(sed -n 's/^entries: //p' $f)
    ov=$((ov + ${o:-0})); dr=$((dr + ${d:-0})); en=$((en + ${e:-0}))
done
echo "overrun=$ov"
echo "dropped=$dr"
echo "entries=$en"
[ -e /run/trace-pipe.pid ] && kill "$(cat /run/trace-pipe.pid)" 2>/dev/null
if [ "$DISARM" = 1 ]; then
    echo 0 > $T/events/enable
    echo > $T/kprobe_events 2>/dev/null
    [ -e /run/trace-pipe.pid ] && kill "$(cat /run/trace-pipe.pid)" 2>/dev/null
    echo "disarmed=1"
fi
