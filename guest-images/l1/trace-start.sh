#!/bin/sh
# Arm tracefs in L1 for the trace oracle (harness/oracles/trace.py).  Enables what exists of the events and
# kprobes the oracle needs, with filters that keep the volume bounded, then turns tracing on.  L0 streams
# trace_pipe over SSH (trace-pipe.sh) and calls trace-stop.sh at the end.
#   GFN_MIN GFN_LIMIT  hex: SPTE/fault events only for GFN_MIN <= gfn < GFN_LIMIT (the ledger's RAM in L2)
#   BUF_KB      ring buffer per CPU, KiB (the reader drains it continuously; keep it small: L1 is under pressure)
#   RULESET     zap-time|create-time: which events the rules need
#   PAGE_FREE   1: enable kmem:mm_page_free (order 0..3, not from the trace's own SSH path), needed by R3
# Prints key=value facts: event=SYS:NAME per enabled event, kprobe=NAME:FUNC:ARGS per probe, missing=...
T=/sys/kernel/tracing
[ -e $T/available_events ] || mount -t tracefs tracefs $T 2>/dev/null
[ -e $T/available_events ] || { echo "trace-start: no tracefs" >&2; exit 1; }
echo 0 > $T/tracing_on
echo nop > $T/current_tracer
echo > $T/trace
echo 0 > $T/events/enable
echo > $T/kprobe_events 2>/dev/null
echo "${BUF_KB:-8192}" > $T/buffer_size_kb
echo 0 > $T/options/irq-info 2>/dev/null      # shorter lines; flags are not used by the oracle
echo 1 > $T/options/record-cmd 2>/dev/null
echo "release=$(uname -r)"
echo "ncpus=$(ls -d $T/per_cpu/cpu* | wc -l)"
echo "buffer_kb=$(cat $T/buffer_size_kb)"

ev() {  # ev SYS NAME [FILTER]
    if grep -qx "$1:$2" $T/available_events; then
        if [ -n "$3" ] && ! echo "$3" > $T/events/$1/$2/filter 2>/dev/null; then
            echo "filter_failed=$1:$2"
        fi
        echo 1 > $T/events/$1/$2/enable && echo "event=$1:$2"
    else
        echo "missing=$1:$2"
    fi
}
G=${GFN_LIMIT:-0x100000}
GM=${GFN_MIN:-0}
if [ "$RULESET" = zap-time ]; then
    # Zap-time rules (R1, R3) look only at changes of a present SPTE (bit 11, SPTE_MMU_PRESENT): installs
    # and fault requests are half the volume and every line costs L1 CPU that L2 then lacks.
    ev kvmmmu kvm_tdp_mmu_spte_changed "gfn >= $GM && gfn < $G && old_spte & 0x800"
else
    ev kvmmmu kvm_tdp_mmu_spte_changed "gfn >= $GM && gfn < $G"
    ev kvmmmu kvm_mmu_spte_requested "gfn >= $GM && gfn < $G"
fi
# kvmmmu:kvm_mmu_set_spte and fast_page_fault are not enabled for the TDP MMU: its installs already show in
# kvm_tdp_mmu_spte_changed, and every line costs L1 CPU (formatting, cat, dropbear) that L2 then lacks.
# The shadow MMU (kvm.tdp_mmu=N) has no SPTE-change event: its installs (gfn -> pfn) come from kvm_mmu_set_spte,
# its zaps from a kprobe on mmu_spte_clear_track_bits (below).
TDP_MMU=$(cat /sys/module/kvm/parameters/tdp_mmu 2>/dev/null)
echo "tdp_mmu=${TDP_MMU:-unknown}"
[ "$TDP_MMU" = N ] && ev kvmmmu kvm_mmu_set_spte "gfn >= $GM && gfn < $G"
ev kvm kvm_unmap_hva_range
# kvm:kvm_age_hva is not enabled: a third of all lines, and no rule needs it
ev vmscan mm_vmscan_write_folio
# mm_page_free: the SSH path that carries this trace frees pages per packet (a feedback loop): not those tasks
[ "${PAGE_FREE:-1}" = 1 ] && ev kmem mm_page_free 'order < 4 && comm != "dropbear" && comm != "cat" && comm != "gzip" && comm != "trace-reader"'

# kprobes on the dirty-marking functions that exist (kvm is a module: its symbols are in kallsyms once loaded).
# One pass over kallsyms (slow under TCG): grep -F reads it (awk's regex over ~200k lines took 4.2 s of L1's CPU,
# measured, against 1.4 s for the read itself), awk then keeps the exact names (module symbols end in a tab and
# [module]; grep -w also passes NAME.cold and the like).
WANT="kvm_set_pfn_dirty kvm_set_page_dirty kvm_release_page_dirty kvm_release_pfn_dirty kvm_release_faultin_page
 kvm_mmu_finish_page_fault handle_changed_spte mmu_spte_clear_track_bits __remove_mapping vmemmap_base"
SYMS=$(grep -w -F "$(echo $WANT | tr ' ' '\n')" /proc/kallsyms |
       awk -v want=" $(echo $WANT) " 'index(want, " " $3 " ") {print $3}' | sort -u)
have() { echo "$SYMS" | grep -qx "$1"; }
kp() {  # kp EVENT FUNC ARGS
    if have "$2"; then
        if echo "p:harness/$1 $2 $3" >> $T/kprobe_events 2>/dev/null; then
            echo 1 > $T/events/harness/$1/enable && echo "kprobe=$1:$2:$3"
        else
            echo "kprobe_failed=$1:$2"
        fi
    else
        echo "missing=kprobe:$2"
    fi
}
# page -> pfn needs vmemmap's base: with KASLR it is the variable vmemmap_base, fetched at each hit.
if have vmemmap_base; then VM="vmemmap=@vmemmap_base:x64"; else VM=""; fi
if have kvm_set_pfn_dirty; then
    # <= 6.12: zap-time marking takes a pfn (first argument, %di)
    kp dirty_pfn kvm_set_pfn_dirty "pfn=%di:x64"
    kp dirty_page kvm_release_page_dirty "page=%di:x64 $VM"
else
    # >= 6.13: kvm_set_page_dirty(struct page *) is the common bottom of every dirty release
    if have kvm_set_page_dirty; then kp dirty_page kvm_set_page_dirty "page=%di:x64 $VM"
    else kp dirty_page kvm_release_page_dirty "page=%di:x64 $VM"; fi
fi
have kvm_release_pfn_dirty && ! have kvm_set_pfn_dirty && kp dirty_pfn kvm_release_pfn_dirty "pfn=%di:x64"
# R4 judges the effect, not the call: reclaim dropping a clean folio, __remove_mapping(mapping, folio, ...)
kp reclaim_clean __remove_mapping "page=%si:x64 $VM"
# shadow MMU zaps: mmu_spte_clear_track_bits(kvm, sptep), the old SPTE read through sptep at entry
[ "$TDP_MMU" = N ] && kp shadow_zap mmu_spte_clear_track_bits "spte=+0(%si):x64"
for s in kvm_set_pfn_dirty kvm_set_page_dirty kvm_release_page_dirty kvm_release_pfn_dirty \
         kvm_release_faultin_page kvm_mmu_finish_page_fault handle_changed_spte mmu_spte_clear_track_bits \
         __remove_mapping; do
    have $s && echo "symbol=$s"
done
echo 1 > $T/tracing_on
echo "tracing_on=$(cat $T/tracing_on)"
