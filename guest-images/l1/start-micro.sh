#!/bin/sh
# Start the micro-guest VMM (/harness/microvm, guest-images/microvm/) detached, in a cgroup v2 leaf of its own
# (no memory.max: its choreographies page out exactly the pages in play themselves).  The guest contract's files
# (harness/guest/contract.py MICRO_FILES):
#   /run/micro.out  "HARNESS-MICRO: start ARGS", microvm's stdout (line-buffered result lines), then
#                   "HARNESS-MICRO: exit RC" once /run/micro.rc is written
#   /run/micro.err  microvm's stderr        /run/micro.rc  its exit status
#   MICRO_ARGS      microvm's arguments (L0 quotes them)
set -e
cg=/sys/fs/cgroup/micro
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
mkdir -p $cg
rm -f /run/micro.rc /run/micro.out /run/micro.err
echo "HARNESS-MICRO: start $MICRO_ARGS" > /run/micro.out
# The subshell joins the cgroup first, so the VMM and all its guest memory are charged there.  The exit status
# is written (atomically) before the exit line, so L0 reads it as soon as it sees that line.
# The trace marker (when tracing is on) stamps the VMM's start on the trace's own clock: the choreography's times
# ("t", seconds since the VMM started) then line up with the trace's (micro-steps.jsonl "trace_ts").
setsid sh -c "echo \$\$ > $cg/cgroup.procs; echo \$\$ > /run/micro.pid
  echo HARNESS-MICRO: start > /sys/kernel/tracing/trace_marker 2>/dev/null
  /harness/microvm $MICRO_ARGS >> /run/micro.out 2> /run/micro.err
  rc=\$?; echo \$rc > /run/micro.rc.tmp; mv /run/micro.rc.tmp /run/micro.rc
  echo \"HARNESS-MICRO: exit \$rc\" >> /run/micro.out" < /dev/null > /dev/null 2>&1 &
echo "started"
