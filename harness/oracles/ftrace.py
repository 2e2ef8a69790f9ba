"""ftrace text decoder (pure): one `trace_pipe` line of L1's trace -> one typed record (docs/trace-oracle.md).

The one decoder the trace oracle's streaming checker and its timelines share.  `decode(line)` gives
  Event  an intact event: timestamp, cpu, pid, event name, its text (`body`) and, for the events the oracle reads,
         `args`: that text decoded to a typed tuple (see ARGS), or None when it does not read as that format;
  Lost   a `CPU:n [LOST m EVENTS]` marker;
  Cut    a line that holds only the remains of events trace_pipe cut short;
  None   anything else (headers, comments, garbage).
Every record has `cuts`: how many events on the line were cut short before it (their text is unknown).

Records are NamedTuples, not frozen dataclasses: as immutable and typed, and ~6x cheaper to build (the trace is ~1 M
events a run, decoded as it streams).  `args` is decoded when asked for: the checker skips most bodies (a free,
writeback or clean drop of a pfn it does not follow), and reading them all would cost it more than the rest.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Union

VMEMMAP_DEFAULT = 0xFFFFEA0000000000  # x86-64 vmemmap base without KASLR of the memory layout
STRUCT_PAGE = 64  # sizeof(struct page) on x86-64
# ftrace prints "%16s-%-7d [%03d]": the CPU's "[" sits at column 25 unless a pid has more than 7 digits.  A "[" much
# further right means the text of a cut event precedes this header (even when that text is only blanks).
HEADER_COL = 25

# the events the oracle reads (kprobes are named by trace-start.sh)
SPTE_CHANGED = "kvm_tdp_mmu_spte_changed"
SPTE_REQUESTED = "kvm_mmu_spte_requested"
SET_SPTE = "kvm_mmu_set_spte"
UNMAP = "kvm_unmap_hva_range"
AGE = "kvm_age_hva"
WRITE_FOLIO = "mm_vmscan_write_folio"
PAGE_FREE = "mm_page_free"
DIRTY_PFN = "dirty_pfn"  # kprobe on kvm_set_pfn_dirty(pfn)
DIRTY_PAGE = "dirty_page"  # kprobe on kvm_release_page_dirty / kvm_set_page_dirty(struct page *)
DIRTY = (DIRTY_PFN, DIRTY_PAGE)
SHADOW_ZAP = "shadow_zap"  # kprobe on mmu_spte_clear_track_bits(kvm, sptep): spte=+0(%si), the old SPTE
RECLAIM_CLEAN = "reclaim_clean"  # kprobe on __remove_mapping(mapping, folio, ...): reclaim drops a clean folio


# ---- typed arguments ------------------------------------------------------------------------------------------

class SpteChange(NamedTuple):  # kvm_tdp_mmu_spte_changed: "as id A gfn G level L old_spte O new_spte N"
    gfn: int
    level: int
    old: int
    new: int


class Fault(NamedTuple):  # kvm_mmu_spte_requested: "gfn G pfn P level L"
    gfn: int
    pfn: int


class Install(NamedTuple):  # kvm_mmu_set_spte: "gfn G spte S (rwxu) level L"
    gfn: int
    spte: int


class OldSpte(NamedTuple):  # shadow_zap: "(mmu_spte_clear_track_bits+0x4/0x1b0 [kvm]) spte=0x..."
    spte: int


class Pfn(NamedTuple):  # dirty_pfn, dirty_page, mm_vmscan_write_folio, reclaim_clean
    pfn: int


class Free(NamedTuple):  # mm_page_free: "page=... pfn=0x... order=N"
    pfn: int
    order: int | None  # None: the text stops before order= (only R3's check of a zapped pfn needs it)


class Range(NamedTuple):  # kvm_unmap_hva_range: "mmu notifier unmap range: 0x... -- 0x..."
    text: bytes  # the range as printed; only timelines show it


Args = Union[SpteChange, Fault, Install, OldSpte, Pfn, Free, Range]


# ---- records ----------------------------------------------------------------------------------------------------

class Event(NamedTuple):
    ts: str  # seconds as printed ("384.110851"): reports quote it, R1's gap check reads it as float
    cpu: int  # -1: unreadable
    pid: int  # -1: unreadable
    name: str
    body: bytes  # the text after "name: "
    cuts: int = 0

    @property
    def args(self) -> Args | None:
        """The body as this event's typed arguments (ARGS); None for other events and for a body that does not
        read as its event's format (e.g. text cut at the end of the stream).  Decoded anew on each access."""
        parse = ARGS.get(self.name)
        if parse is None:
            return None
        try:
            return parse(self.body)
        except (ValueError, IndexError):
            return None


class Lost(NamedTuple):
    count: int  # type: ignore[assignment]  # the events ftrace lost; shadows tuple.count, never called on a Lost
    text: str
    cuts: int = 0


class Cut(NamedTuple):
    cuts: int


Record = Union[Event, Lost, Cut]
_new = tuple.__new__  # builds a NamedTuple without its keyword-handling __new__ (hot path)


# ---- body fields ------------------------------------------------------------------------------------------------

def _field(body: bytes, key: bytes) -> int:
    i = body.find(key)
    if i < 0:
        raise ValueError(key)
    i += len(key)
    j = body.find(b" ", i)
    return int(body[i:j] if j >= 0 else body[i:], 16)


def page_pfn(body: bytes) -> int:
    """pfn of a kprobe hit that recorded a struct page/folio pointer (page=) and the vmemmap base (vmemmap=)."""
    page = _field(body, b"page=")
    try:
        base = _field(body, b"vmemmap=")
    except ValueError:
        base = VMEMMAP_DEFAULT
    return (page - base) // STRUCT_PAGE


def dirty_pfn(name: bytes | str, body: bytes) -> int:
    """pfn of a dirty-mark kprobe hit: dirty_pfn has pfn=; dirty_page has page= (struct page *) and vmemmap=."""
    return _field(body, b"pfn=") if name in (b"dirty_pfn", DIRTY_PFN) else page_pfn(body)


def _spte_changed(body: bytes) -> SpteChange:
    f = body.split()
    return _new(SpteChange, (int(f[4], 16), int(f[6]), int(f[8], 16), int(f[10], 16)))


def _gfn_pfn(body: bytes) -> Fault:
    f = body.split()
    return _new(Fault, (int(f[1], 16), int(f[3], 16)))


def _install(body: bytes) -> Install:
    f = body.split()
    return _new(Install, (int(f[1], 16), int(f[3], 16)))


def _page_free(body: bytes) -> Free:
    pfn = _field(body, b"pfn=")
    try:
        order = _field(body, b"order=")
    except ValueError:
        order = None
    return _new(Free, (pfn, order))


def _pfn(body: bytes) -> Pfn:
    return _new(Pfn, (_field(body, b"pfn="),))


def _page(body: bytes) -> Pfn:
    return _new(Pfn, (page_pfn(body),))


def _old_spte(body: bytes) -> OldSpte:
    return _new(OldSpte, (_field(body, b"spte="),))


def _range(body: bytes) -> Range:
    return _new(Range, (body.split(b": ", 1)[-1],))


ARGS: dict[str, Callable[[bytes], Args]] = {  # event name -> the parser of its body
    SPTE_CHANGED: _spte_changed,
    SPTE_REQUESTED: _gfn_pfn,
    SET_SPTE: _install,
    UNMAP: _range,
    WRITE_FOLIO: _pfn,
    PAGE_FREE: _page_free,
    DIRTY_PFN: _pfn,
    DIRTY_PAGE: _page,
    SHADOW_ZAP: _old_spte,
    RECLAIM_CLEAN: _page,
}
_NAMES = {n.encode(): n for n in (*ARGS, AGE)}  # the same str objects each time: cheap to compare and count


# ---- lines ------------------------------------------------------------------------------------------------------

def split_line(line: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes, bool] | None:
    """(name, cpu, pid, ts, body, cut_in_header) as text, or None for headers/garbage.  A task name with a space
    other than QEMU's "CPU n/KVM" means the header itself was cut (the text of an older event precedes it)."""
    r = line.find(b"] ")
    if r < 0:
        return None
    h = _head(line[:r])
    t = _tail(line, r)
    if h is None or t is None:
        return None
    return t[0], h[0], h[1], t[1], t[2], h[2]


def _head(head: bytes) -> tuple[bytes, bytes, bool] | None:
    """(cpu, pid, cut_in_header) of the header before the CPU field's "] "."""
    lb = head.rfind(b"[")
    if lb < 0:
        return None
    d = head.rfind(b"-", 0, lb)  # the pid follows the task name's last "-"
    return head[lb + 1:], head[d + 1:lb].rstrip() if d >= 0 else head[:lb].strip(), lb != HEADER_COL


def _tail(line: bytes, r: int) -> tuple[bytes, bytes, bytes] | None:
    """(name, ts, body) after the CPU field's "] " at r."""
    k = line.find(b": ", r)
    if k < 0:
        return None
    e = line.find(b": ", k + 2)
    if e < 0:
        e = len(line)
    sp = line.rfind(b" ", r + 1, k)  # the timestamp is the last word before ": " (irq-info flags may precede it)
    return line[k + 2:e], line[sp + 1:k], line[e + 2:]


# Decoded headers by their text up to the CPU field: one per task and cpu, so decoding one costs a lookup (the
# finds, slices and int()s of a header cost more than the rest of the line).  Cut headers are not kept.
_HEADS: dict[bytes, tuple[int, int, int]] = {}


def _typed_head(head: bytes) -> tuple[int, int, int] | None:
    """(cpu, pid, cuts) of a header; -1 for a cpu or pid that does not read."""
    h = _head(head)
    if h is None:
        return None
    cpu, pid, cut = h
    v = (int(cpu) if cpu.isdigit() else -1, int(pid) if pid.isdigit() else -1, 1 if cut else 0)
    if not cut and len(_HEADS) < 1 << 14:
        _HEADS[head] = v
    return v


def _is_lost(line: bytes) -> bool:
    return line.startswith(b"CPU:") and b"LOST" in line


def uncut(line: bytes) -> tuple[bytes, int]:
    """trace_pipe sometimes cuts an event's text short and the next event's header follows on the same line
    (seen on 6.12 when the reader keeps up with the writer).  Returns (the last intact event's text, cuts)."""
    cuts = 0
    while True:
        r = line.find(b"] ")
        if r < 0 or line.find(b"] ", r + 2) < 0:
            return line, cuts
        line = line[r + 2:]
        cuts += 1
        if _is_lost(line):
            return line, cuts


def decode(line: bytes | str) -> Record | None:
    """One trace_pipe line (without its newline) -> Event, Lost, Cut or None (see the module's doc)."""
    if isinstance(line, str):
        line = line.encode()
    r = line.find(b"] ")
    if r < 0 or line[0] == 67:  # 67 = "C": could be a LOST marker ("CPU:"); one byte is cheaper to test first
        if _is_lost(line):
            return _new(Lost, (next((int(w) for w in line.split() if w.isdigit()), 0), _s(line.strip()), 0))
        if r < 0:
            return None
    if line.find(b"] ", r + 2) >= 0:  # a cut line: another event's header follows the cut text
        rest, cuts = uncut(line)
        rec = decode(rest)
        return _new(Cut, (cuts,)) if rec is None else rec._replace(cuts=cuts)
    head = line[:r]
    h = _HEADS.get(head) or _typed_head(head)
    t = _tail(line, r)
    if h is None or t is None:
        return None
    name, ts, body = t
    try:
        stamp = ts.decode()  # a third of the cost of decode(errors="replace")
    except UnicodeDecodeError:
        stamp = ts.decode(errors="replace")
    return _new(Event, (stamp, h[0], h[1], _NAMES.get(name) or name.decode(errors="replace"), body, h[2]))


def parse_line(line: str | bytes) -> Event | None:
    """The Event of a line (None for markers and garbage)."""
    if isinstance(line, str):
        line = line.encode()
    rec = decode(line.rstrip(b"\n"))
    return rec if type(rec) is Event else None


def _s(b: object) -> str:
    return b.decode(errors="replace") if isinstance(b, (bytes, bytearray)) else str(b)
