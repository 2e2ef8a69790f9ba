#!/bin/sh
# Start L2's QEMU under L1's KVM inside a memory-limited cgroup v2 leaf, detached; it ends when L2 powers off.
#   L2_MEM_MB L2_CPUS MEMORY_MAX_MB BACKEND=anon|memfd|file L2_APPEND KERNEL_NODE_MB DMA_DISK_MB
# KERNEL_NODE_MB > 0 splits L2's RAM in two.  Node 0 (L2's kernel and CPUs) is a tmpfs file that this shell
# fills *before* QEMU starts, so its pages are charged to L1's root cgroup, outside memory.max (and shmem folios
# come back dirty from swap anyway).  The rest is a cold-plugged DIMM on node 1 that L2 onlines as ZONE_MOVABLE
# (L2 cmdline movable_node): no kernel data lands there (no page structs, no kswapd stack), only the ledger's
# pages (it binds to node 1).  So reclaim and a broken L1 hit the ledger, and L2's kernel lives to report it.
set -e
cg=/sys/fs/cgroup/l2
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
mkdir -p $cg
echo "${MEMORY_MAX_MB}M" > $cg/memory.max
KERNEL_NODE_MB=${KERNEL_NODE_MB:-0}
data_mb=$((L2_MEM_MB - KERNEL_NODE_MB))
case "$BACKEND" in
anon)  data="memory-backend-ram,id=ram0,size=${data_mb}M" ;;
memfd) data="memory-backend-memfd,id=ram0,size=${data_mb}M,share=on" ;;
file)  mkdir -p /dev/shm && mount -t tmpfs shm /dev/shm 2>/dev/null || true
       rm -f /dev/shm/l2-ram
       data="memory-backend-file,id=ram0,size=${data_mb}M,mem-path=/dev/shm/l2-ram,share=on" ;;
*) echo "start-l2: unknown BACKEND $BACKEND" >&2; exit 1 ;;
esac
if [ "$KERNEL_NODE_MB" -gt 0 ]; then
    dd if=/dev/zero of=/run/l2-kernel-node.ram bs=1M count="$KERNEL_NODE_MB" 2>/dev/null
    mem="-m ${KERNEL_NODE_MB}M,slots=1,maxmem=${L2_MEM_MB}M"
    mem="$mem -object memory-backend-file,id=knode,size=${KERNEL_NODE_MB}M,mem-path=/run/l2-kernel-node.ram,share=on"
    mem="$mem -numa node,nodeid=0,cpus=0-$((L2_CPUS - 1)),memdev=knode -numa node,nodeid=1"
    mem="$mem -object $data -device pc-dimm,id=data,memdev=ram0,node=1"
else
    mem="-m ${L2_MEM_MB} -object $data -machine memory-backend=ram0"
fi
# DMA_DISK_MB > 0 (ledger.dma_frac): a small virtio-blk disk (serial harness-dma) that the ledger writes its own
# pages to with O_DIRECT, so that L2's QEMU reads those guest pages itself (swapping them in on a read access,
# with no SPTE).  The backing is a raw file in L1's /run (tmpfs), filled here *before* QEMU starts: every page of
# it exists and is charged to L1's root cgroup, as the kernel node file is; QEMU's writes only overwrite those
# shmem pages, so nothing of the disk is charged to memory.max or competes with the ledger there (a sparse file,
# or one QEMU extended, would be charged to the l2 cgroup; a file on L1's swap disk is not an option).  A few MiB
# of L1's 4 GiB are nothing.  Not null-co, /dev/null or /dev/zero: those never read the buffer.  cache=writeback:
# QEMU hands the guest's pages straight to pwritev and L1's kernel copies from them (a CPU read through QEMU's
# page tables, the access that matters); cache=none changes nothing on tmpfs (its O_DIRECT is a buffered copy) but
# needs an L1 of 6.6 or later.
dma=""
if [ "${DMA_DISK_MB:-0}" -gt 0 ]; then
    dd if=/dev/zero of=/run/l2-dma.disk bs=1M count="$DMA_DISK_MB" 2>/dev/null
    dma="-drive file=/run/l2-dma.disk,if=none,id=dma0,format=raw,cache=writeback"
    dma="$dma -device virtio-blk-pci,drive=dma0,serial=harness-dma"
fi
rm -f /run/l2.rc /run/l2-console.log /run/l2-result.log
: > /run/l2-console.log
# The result channel: a virtio-serial port that L2's init and the ledger write every result line to.  A write
# to it returns only once QEMU has taken the bytes, so nothing is lost at L2's `poweroff -f`, where the tail of
# the serial console can be (seen: the ledger's done line and init's exit line both missing, QEMU exit 0).
result="-device virtio-serial-pci,id=vser0 -chardev file,id=result,path=/run/l2-result.log"
result="$result -device virtserialport,bus=vser0.0,chardev=result,name=harness.result"

# The subshell joins the cgroup first, so QEMU and all its guest memory are charged there.
rm -f /run/l2.pid
setsid sh -c "echo \$\$ > $cg/cgroup.procs; echo \$\$ > /run/l2.pid; renice -n 10 -p \$\$ >/dev/null
  qemu-system-x86_64 -L /usr/share/qemu -enable-kvm -cpu host,-xsave -machine pc $mem -smp $L2_CPUS \
    -nodefaults -no-user-config -vga none -display none -no-reboot \
    -serial file:/run/l2-console.log $result $dma -kernel /l2/bzImage -initrd /l2/initramfs.cpio \
    -append '$L2_APPEND' > /run/l2-qemu.log 2>&1
  echo \$? > /run/l2.rc" < /dev/null > /dev/null 2>&1 &
# the pid file is written once the subshell has joined the cgroup: wait for it (at most 10 s), not a fixed nap
i=0
while [ ! -s /run/l2.pid ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -s /run/l2.pid ] || { echo "start-l2.sh: L2's pid file /run/l2.pid did not appear within 10 s" >&2; exit 1; }
cat /run/l2.pid
