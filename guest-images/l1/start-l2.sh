#!/bin/sh
# Start L2's QEMU under L1's KVM inside a memory-limited cgroup v2 leaf, detached; it ends when L2 powers off.
#   L2_MEM_MB L2_CPUS MEMORY_MAX_MB BACKEND=anon|memfd|file L2_APPEND
# L2's QEMU runs niced: on a 1-vCPU L1 it would otherwise starve the SSH control and trace streams.
# Files: /run/l2-console.log (L2 serial), /run/l2.pid, /run/l2.rc (QEMU's exit code once it ends).
set -e
cg=/sys/fs/cgroup/l2
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
mkdir -p $cg
echo "${MEMORY_MAX_MB}M" > $cg/memory.max
case "$BACKEND" in
anon)  mem="-m ${L2_MEM_MB}" ;;
memfd) mem="-m ${L2_MEM_MB} -object memory-backend-memfd,id=ram0,size=${L2_MEM_MB}M,share=on -machine memory-backend=ram0" ;;
file)  mem="-m ${L2_MEM_MB} -object memory-backend-file,id=ram0,size=${L2_MEM_MB}M,mem-path=/dev/shm/l2-ram,share=on -machine memory-backend=ram0"
       mkdir -p /dev/shm && mount -t tmpfs shm /dev/shm 2>/dev/null || true ;;
*) echo "start-l2: unknown BACKEND $BACKEND" >&2; exit 1 ;;
esac
rm -f /run/l2.rc /run/l2-console.log
: > /run/l2-console.log
# The subshell joins the cgroup first, so QEMU and all its guest memory are charged there.
setsid sh -c "echo \$\$ > $cg/cgroup.procs; echo \$\$ > /run/l2.pid; renice -n 10 -p \$\$ >/dev/null
  qemu-system-x86_64 -L /usr/share/qemu -enable-kvm -cpu host,-xsave -machine pc $mem -smp $L2_CPUS \
    -nodefaults -no-user-config -vga none -display none -no-reboot \
    -serial file:/run/l2-console.log -kernel /l2/bzImage -initrd /l2/initramfs.cpio \
    -append '$L2_APPEND' > /run/l2-qemu.log 2>&1
  echo \$? > /run/l2.rc" < /dev/null > /dev/null 2>&1 &
sleep 0.2
cat /run/l2.pid
