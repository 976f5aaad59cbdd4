"""Shared machinery of the detectors: batch plans, slot tables, detections, kernels.

Sequential semantics, compiled execution
    Every detector is defined reading by reading: each (series, metric) stream
    (or each series' message stream) is a small state machine fed in ARRIVAL
    order. A micro-batch is executed by a compiled kernel (``processors._jit``)
    that walks the batch rows (or messages) in arrival order over the
    struct-of-arrays state, with the same float operations in the same order
    (float32 state rounded where the reference rounds it), so the result is
    bit-identical to a reading-by-reading loop and does not depend on how the
    stream was cut into micro-batches.

Messages
    Rows of one message are contiguous with increasing metric codes; a new
    message starts where the series or the timestamp changes, or where the
    metric code does not increase. Detectors that need several metrics of one
    reading (humidity, loop health) or one event per message (dead sensor) run
    on messages.

Slot tables
    State is struct-of-arrays. A per-metric table gives each series one row per
    covered metric it has ever reported; the rows of a series are contiguous:
    ``base[sid]`` (int32, -1 = none) is the first and ``mask[sid]`` (uint8) has
    bit ``local[metric]`` (the metric's index among the covered metrics of its
    kind) set for every metric with a row, so a metric's row is ``base +
    popcount(mask & (bit - 1))``. A metric a series reports for the first time
    moves the series' rows to a new block at the end (the old rows are left
    unused: at most one move per new metric, so a few rows per series at
    worst). A per-series table has one row per series and no mask. New series
    are allocated in ascending series order. Rows are never freed.

Kernels
    A detector's kernel walks the batch rows (or messages) from a start item,
    looks up each item's state row itself (``slot_row``), updates the state and
    writes its detections with ``put`` into preallocated int64 / float64
    buffers. It stops before an item whose row does not exist yet or whose
    detections would not fit; ``run_kernel`` then allocates rows (or bigger
    buffers) and calls it again from there. Kernels write detections in row
    order, and in a fixed order within one row, so no sort is needed;
    ``detections_of`` turns them into columnar ``Detections``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Final

import numpy as np
from numpy.typing import DTypeLike, NDArray

from processors._jit import kernel, typed_kernel
from urbanpulse._batch import ReadingBatch, SeriesKey
from urbanpulse._events import Severity
from urbanpulse._schema import METRIC_INFO, Kind, Metric

__all__ = [
    "CHANGE",
    "END",
    "NO_METRIC",
    "START",
    "STATE_NAMES",
    "BatchPlan",
    "Column",
    "Described",
    "DetectionRow",
    "Detections",
    "DetectorBase",
    "Out",
    "SlotTable",
    "Step",
    "detections_of",
    "f64",
    "i64",
    "metric_layout",
    "np_max",
    "np_min",
    "popcount8",
    "put",
    "row_allocator",
    "run_kernel",
    "series_layout",
    "slot_row",
]

I64 = NDArray[np.int64]
I32 = NDArray[np.int32]
F64 = NDArray[np.float64]
IntP = NDArray[np.intp]
Snapshot = dict[str, NDArray[Any]]
#: A kernel's detections: int64 (row, ts_ns, code, state, label) and float64
#: (value, score, ref) columns, one row per detection.
Out = tuple[NDArray[np.int64], NDArray[np.float64]]
#: What a kernel call returns: the item (row or message) it stopped at (the
#: number of items when done), the detections it wrote, and whether it stopped
#: because that item has no state row yet (else: the buffers are full).
Step = tuple[int, int, bool]

START: Final = 0
END: Final = 1
CHANGE: Final = 2
STATE_NAMES: Final = ("start", "end", "change")
#: A metric code no table covers (``local[NO_METRIC] == -1``): "no row wanted".
NO_METRIC: Final = 255

# --------------------------------------------------------------------------- kernels


@kernel
def _message_starts(sid: I32, metric: NDArray[np.uint8], ts_ns: I64) -> I64:
    """First row of each message."""
    n = sid.shape[0]
    first = np.empty(n, np.int64)
    k = 0
    for i in range(n):
        if i == 0 or sid[i] != sid[i - 1] or ts_ns[i] != ts_ns[i - 1] or metric[i] <= metric[i - 1]:
            first[k] = i
            k += 1
    return first[:k].copy()


@kernel
def popcount8(x: int) -> int:
    """Set bits of a byte."""
    x = x - ((x >> 1) & 0x55)
    x = (x & 0x33) + ((x >> 2) & 0x33)
    return (x + (x >> 4)) & 0x0F


@kernel
def _table_rows(
    base: I32,
    mask: NDArray[np.uint8],
    local: I64,
    sid: I32,
    metric: NDArray[np.uint8],
    rows: I32,
) -> int:
    """``rows[i]``: the state row of (sid[i], metric[i]); -1 when the metric is not
    covered, -2 when the row does not exist yet. Returns the number of -2s."""
    missing = 0
    for i in range(sid.shape[0]):
        slot = local[metric[i]]
        if slot < 0:
            rows[i] = -1
            continue
        r = slot_row(base, mask, slot, sid[i])
        if r < 0:
            rows[i] = -2
            missing += 1
        else:
            rows[i] = r
    return missing


@typed_kernel(
    "void(int64[:, ::1], float64[:, ::1], int64, int64, int64, int64, int64, int64,"
    " float64, float64, float64)"
)
def put(
    oi: NDArray[np.int64],
    of: NDArray[np.float64],
    k: int,
    row: int,
    ts_ns: int,
    code: int,
    state: int,
    label: int,
    value: float,
    score: float,
    ref: float,
) -> None:
    """Write detection ``k`` into the buffers (the caller checked the capacity)."""
    oi[k, 0] = row
    oi[k, 1] = ts_ns
    oi[k, 2] = code
    oi[k, 3] = state
    oi[k, 4] = label
    of[k, 0] = value
    of[k, 1] = score
    of[k, 2] = ref


@typed_kernel("int64(int64)")
def i64(x: int) -> int:
    """An integer (e.g. a uint8 state cell) as int64: in kernels ``int(x)`` keeps
    the narrow type (uint8 arithmetic would wrap)."""
    return x


@typed_kernel("float64(float64)")
def f64(x: float) -> float:
    """A float (e.g. a float32 state cell) as float64, exactly: in kernels
    ``float(x)`` keeps float32 (arithmetic would round to float32)."""
    return x


@typed_kernel("int64(int32[::1], uint8[::1], int64, int64)")
def slot_row(base: I32, mask: NDArray[np.uint8], slot: int, sid: int) -> int:
    """The state row of a series' metric slot, -1 when it has none (yet)."""
    if sid >= base.shape[0]:
        return -1
    b = i64(base[sid])
    if b < 0 or mask.shape[0] == 0:
        return b
    bits = i64(mask[sid])
    bit = 1 << slot
    if bits & bit == 0:
        return -1
    return b + popcount8(bits & (bit - 1))


@kernel
def np_max(a: float, b: float) -> float:
    """``np.maximum`` of two floats (NaN wins, like numpy)."""
    return a if (a >= b or np.isnan(a)) else b


@kernel
def np_min(a: float, b: float) -> float:
    """``np.minimum`` of two floats (NaN wins, like numpy)."""
    return a if (a <= b or np.isnan(a)) else b


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True, eq=False)
class BatchPlan:
    """A batch's columns (contiguous, fixed dtypes) and its message boundaries.

    Compute once per batch (``BatchPlan.of``) and pass to each detector.
    """

    sid: I32
    metric: NDArray[np.uint8]
    ts_ns: I64
    value: F64
    #: First row of each message.
    msg_first: I64

    @classmethod
    def of(cls, batch: ReadingBatch) -> BatchPlan:
        sid = np.ascontiguousarray(batch.sid, np.int32)
        metric = np.ascontiguousarray(batch.metric, np.uint8)
        ts = np.ascontiguousarray(batch.ts_ns, np.int64)
        value = np.ascontiguousarray(batch.value, np.float64)
        return cls(sid, metric, ts, value, _message_starts(sid, metric, ts))

    def __len__(self) -> int:
        return int(self.sid.shape[0])

    @property
    def n_messages(self) -> int:
        return int(self.msg_first.shape[0])


# --------------------------------------------------------------------------- slot tables


@dataclass(frozen=True, slots=True)
class Column:
    dtype: DTypeLike
    fill: float | int
    #: Extra trailing shape (e.g. histogram bins).
    shape: tuple[int, ...] = ()


def _local() -> I64:
    return np.full(256, -1, np.int64)


def metric_layout(metrics: Iterable[Metric]) -> I64:
    """Slot of each metric code among the covered metrics of its kind (-1: not
    covered), for a per-metric table (``SlotTable(..., per_metric=True)``)."""
    local = _local()
    width = [0] * len(Kind)
    for m in sorted(set(metrics)):
        kind = METRIC_INFO[m].kind
        local[m] = width[kind]
        width[kind] += 1
    return local


def series_layout(metrics: Iterable[Metric]) -> I64:
    """Slot 0 for each of ``metrics`` (a per-series table: one row per series
    that shows any of them)."""
    local = _local()
    for m in metrics:
        local[m] = 0
    return local


_POPCOUNT8: Final = np.array([bin(i).count("1") for i in range(256)], np.int64)


class SlotTable:
    """Struct-of-arrays state rows for (series, covered metric), grown on demand."""

    __slots__ = ("base", "cols", "local", "mask", "n_rows", "per_metric", "spec")

    def __init__(self, spec: Mapping[str, Column], local: I64, *, per_metric: bool) -> None:
        self.spec = dict(spec)
        self.local = local
        self.per_metric = per_metric
        self.base = np.empty(0, np.int32)
        self.mask = np.empty(0, np.uint8)
        self.n_rows = 0
        self.cols: dict[str, NDArray[Any]] = {
            name: np.full((0, *c.shape), c.fill, dtype=c.dtype) for name, c in self.spec.items()
        }

    def find(self, sid: I32, metric: NDArray[np.uint8]) -> I32:
        """Rows of (sid, metric) pairs, -1 where there is none (no allocation)."""
        rows = np.empty(sid.shape[0], np.int32)
        sid32 = np.ascontiguousarray(sid, np.int32)
        met = np.ascontiguousarray(metric, np.uint8)
        if _table_rows(self.base, self.mask, self.local, sid32, met, rows):
            rows[rows < 0] = -1
        return rows

    def allocate(self, sid: I32, metric: NDArray[np.uint8]) -> None:
        """Allocate the missing rows of (sid, metric) pairs (uncovered metrics
        are ignored)."""
        rows = np.empty(sid.shape[0], np.int32)
        sid = np.ascontiguousarray(sid, np.int32)
        metric = np.ascontiguousarray(metric, np.uint8)
        if _table_rows(self.base, self.mask, self.local, sid, metric, rows):
            new = rows == -2
            self._allocate(sid[new], metric[new])

    def _allocate(self, sid: I32, metric: NDArray[np.uint8]) -> None:
        n_series = int(sid.max()) + 1
        if n_series > self.base.shape[0]:
            size = max(n_series, self.base.shape[0] * 5 // 4)
            base = np.full(size, -1, np.int32)
            base[: self.base.shape[0]] = self.base
            self.base = base
            if self.per_metric:
                mask = np.zeros(size, np.uint8)
                mask[: self.mask.shape[0]] = self.mask
                self.mask = mask
        if not self.per_metric:
            ns = np.unique(sid)
            offsets = self.n_rows + np.arange(ns.shape[0], dtype=np.int64)
            self._reserve(self.n_rows + int(ns.shape[0]))
            self.base[ns] = offsets.astype(np.int32)
            if "sid" in self.cols:
                self.cols["sid"][offsets] = ns
            return
        want = np.zeros(self.base.shape[0], np.int64)
        np.bitwise_or.at(want, sid, np.left_shift(1, self.local[metric]))
        ns = np.flatnonzero(want).astype(np.int32)
        old_base = self.base[ns].astype(np.int64)
        old_mask = np.where(old_base >= 0, self.mask[ns], 0).astype(np.int64)
        new_mask = old_mask | want[ns]
        width = _POPCOUNT8[new_mask]
        offsets = self.n_rows + np.cumsum(width) - width
        self._reserve(self.n_rows + int(width.sum()))
        moved = old_mask != 0
        for slot in range(8):
            bit = 1 << slot
            has = moved & ((old_mask & bit) != 0)
            if not bool(has.any()):
                continue
            src = old_base[has] + _POPCOUNT8[old_mask[has] & (bit - 1)]
            dst = offsets[has] + _POPCOUNT8[new_mask[has] & (bit - 1)]
            for col in self.cols.values():
                col[dst] = col[src]
        self.base[ns] = offsets.astype(np.int32)
        self.mask[ns] = new_mask.astype(np.uint8)

    def _reserve(self, n_rows: int) -> None:
        cap = next(iter(self.cols.values())).shape[0] if self.cols else 0
        self.n_rows = n_rows
        if n_rows <= cap:
            return
        new_cap = max(n_rows, cap * 5 // 4)
        for name, c in self.spec.items():
            old = self.cols[name]
            grown = np.full((new_cap, *c.shape), c.fill, dtype=c.dtype)
            grown[:cap] = old
            self.cols[name] = grown

    def row_of(self, sid: int, metric: Metric) -> int | None:
        """The row of one pair, or None when it has no state (tests, descriptions)."""
        row = int(self.find(np.array([sid], np.int32), np.array([metric], np.uint8))[0])
        return None if row < 0 else row

    @property
    def nbytes(self) -> int:
        """Allocated bytes (capacity, including unused rows and growth slack)."""
        arrays: list[NDArray[Any]] = [self.base, self.mask, *self.cols.values()]
        return sum(int(a.nbytes) for a in arrays)

    def snapshot(self, prefix: str) -> Snapshot:
        snap: Snapshot = {f"{prefix}base": self.base.copy(), f"{prefix}local": self.local.copy()}
        if self.per_metric:
            snap[f"{prefix}mask"] = self.mask.copy()
        snap[f"{prefix}n_rows"] = np.array(self.n_rows, np.int64)
        for name, col in self.cols.items():
            snap[f"{prefix}col.{name}"] = col[: self.n_rows].copy()
        return snap

    def misfit(self, snap: Mapping[str, NDArray[Any]], prefix: str) -> str | None:
        """Why ``snap`` cannot be restored into this table (another version's or
        config's layout, a missing or reshaped column), or None when it can."""
        local = snap.get(f"{prefix}local")
        if local is None or not np.array_equal(local, self.local):
            return f"{prefix}: metric layout differs"
        needed = [f"{prefix}base", f"{prefix}n_rows"] + (
            [f"{prefix}mask"] if self.per_metric else []
        )
        missing = [k for k in needed if k not in snap]
        if missing:
            return f"{prefix}: missing {missing[0]}"
        n = int(snap[f"{prefix}n_rows"])
        for name, c in self.spec.items():
            col = snap.get(f"{prefix}col.{name}")
            if col is None or col.shape != (n, *c.shape):
                return f"{prefix}: column {name} missing or reshaped"
        return None

    def restore(self, snap: Mapping[str, NDArray[Any]], prefix: str) -> None:
        reason = self.misfit(snap, prefix)
        if reason is not None:
            raise ValueError(f"cannot restore detector state: {reason}")
        self.base = np.array(snap[f"{prefix}base"], dtype=np.int32)
        if self.per_metric:
            self.mask = np.array(snap[f"{prefix}mask"], dtype=np.uint8)
        self.n_rows = int(snap[f"{prefix}n_rows"])
        self.cols = {
            name: np.array(snap[f"{prefix}col.{name}"], dtype=c.dtype)
            for name, c in self.spec.items()
        }


# --------------------------------------------------------------------------- detections


@dataclass(frozen=True, slots=True, eq=False)
class Detections:
    """Columnar detections of one detector (or the suite), one row per event.

    ``row`` is the batch row that triggered it (-1 for ``check``); ``metric`` is
    -1 when the event concerns a series, not a metric; ``code`` indexes the
    detector's code table; ``state`` is ``START``/``END``/``CHANGE``; ``ref`` is
    the reference the value was compared with (mean, bound, free flow, ...);
    ``label`` carries a small detector-specific integer (e.g. LOS classes).
    ``det`` is the index of the detector within a suite (0 for a lone one).
    """

    row: I64
    sid: I64
    metric: NDArray[np.int16]
    code: NDArray[np.uint8]
    state: NDArray[np.uint8]
    ts_ns: I64
    value: F64
    score: F64
    ref: F64
    label: NDArray[np.int16]
    det: NDArray[np.uint8]

    def __len__(self) -> int:
        return int(self.row.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        cols: list[NDArray[Any]] = [np.empty(0, dt) for dt in _DET_DTYPES]
        return cls(*cols)

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, c) for p in parts]) for c in _DET_COLS))

    def take(self, index: NDArray[np.bool_] | IntP) -> Detections:
        return Detections(*(getattr(self, c)[index] for c in _DET_COLS))

    def with_det(self, det: int) -> Detections:
        return replace(self, det=np.full(len(self), det, np.uint8))

    def sorted_by_row(self) -> Detections:
        """Stable order by batch row (check events, row -1, stay first)."""
        if len(self) < 2 or bool(np.all(self.row[1:] >= self.row[:-1])):
            return self
        return self.take(np.argsort(self.row, kind="stable"))

    def columns(self) -> dict[str, NDArray[Any]]:
        return {c: getattr(self, c) for c in _DET_COLS}

    def records(self) -> list[tuple[Any, ...]]:
        """One tuple per detection (NaN-safe equality via ``repr`` of floats)."""
        cols = [getattr(self, c).tolist() for c in _DET_COLS]
        return [
            tuple(repr(v) if isinstance(v, float) else v for v in row)
            for row in zip(*cols, strict=True)
        ]


_DET_COLS: Final = tuple(f.name for f in fields(Detections))
_DET_DTYPES: Final = (
    np.int64,
    np.int64,
    np.int16,
    np.uint8,
    np.uint8,
    np.int64,
    np.float64,
    np.float64,
    np.float64,
    np.int16,
    np.uint8,
)


def run_kernel(
    n_items: int,
    step: Callable[[int, NDArray[np.int64], NDArray[np.float64]], Step],
    allocate: Callable[[int], None],
) -> Out:
    """Drive a kernel over ``n_items`` rows or messages.

    ``step(i, oi, of)`` runs the kernel from item ``i`` with empty buffers (each
    item needs at most 2 free rows; the kernels stop before an item that does
    not fit) and returns a ``Step``. When it stopped at an item without a state
    row, ``allocate(i)`` allocates the rows of items ``i..`` (all at once, in
    ascending series order, as if allocated before the batch); when the buffers
    were full, larger ones are used. ``step`` must read the table columns anew
    on each call (allocation may replace them).
    """
    cap = 16 + n_items // 256
    ois: list[NDArray[np.int64]] = []
    ofs: list[NDArray[np.float64]] = []
    i = 0
    while True:
        oi = np.empty((cap, 5), np.int64)
        of = np.empty((cap, 3), np.float64)
        i, k, missing = step(i, oi, of)
        if k:
            ois.append(oi[:k])
            ofs.append(of[:k])
        if i >= n_items:
            break
        if missing:
            allocate(i)
        else:
            cap *= 4
    if len(ois) == 1:
        return ois[0], ofs[0]
    if not ois:
        return np.empty((0, 5), np.int64), np.empty((0, 3), np.float64)
    return np.concatenate(ois), np.concatenate(ofs)


def row_allocator(table: SlotTable, plan: BatchPlan) -> Callable[[int], None]:
    """``allocate`` for ``run_kernel`` over the rows of a batch."""

    def allocate(i: int) -> None:
        table.allocate(plan.sid[i:], plan.metric[i:])

    return allocate


def detections_of(plan: BatchPlan, out: Out, *, metric: int | None = None) -> Detections:
    """The detections a kernel wrote over ``plan`` (column 0 = batch row);
    ``metric``: the same for all (-1: a series event), or None: the row's metric."""
    oi, of = out
    k = int(oi.shape[0])
    if k == 0:
        return Detections.empty()
    row = oi[:, 0].copy()
    met = plan.metric[row].astype(np.int16) if metric is None else np.full(k, metric, np.int16)
    return Detections(
        row,
        plan.sid[row].astype(np.int64),
        met,
        oi[:, 2].astype(np.uint8),
        oi[:, 3].astype(np.uint8),
        oi[:, 1].copy(),
        of[:, 0].copy(),
        of[:, 1].copy(),
        of[:, 2].copy(),
        oi[:, 4].astype(np.int16),
        np.zeros(k, np.uint8),
    )


# --------------------------------------------------------------------------- detectors


@dataclass(frozen=True, slots=True)
class DetectionRow:
    """One detection as Python values, with its series key (for descriptions)."""

    key: SeriesKey
    metric: Metric | None
    code: int
    state: int
    ts_ns: int
    value: float
    score: float
    ref: float
    label: int

    @property
    def where(self) -> str:
        """``sensor (district)`` or ``sensor lane N (district)``."""
        lane = f" lane {self.key.lane}" if self.key.lane else ""
        return f"{self.key.sensor_id}{lane} ({self.key.district})"

    @property
    def field(self) -> str:
        return "" if self.metric is None else METRIC_INFO[self.metric].field

    @property
    def unit(self) -> str:
        unit = "" if self.metric is None else METRIC_INFO[self.metric].unit
        return "" if unit == "1" else unit


@dataclass(frozen=True, slots=True)
class Described:
    detector: str
    severity: Severity
    message: str
    labels: dict[str, str]


class DetectorBase(abc.ABC):
    """Plumbing shared by the detectors: enable flag, tables, snapshot, sizes.

    Subclasses implement ``_update(plan)`` (and optionally ``_check``) and
    ``describe``. ``update`` of a disabled detector returns nothing and keeps no
    state.
    """

    name: ClassVar[str] = ""

    def __init__(self, enabled: bool, tables: Mapping[str, SlotTable]) -> None:
        self.enabled = enabled
        self.tables = dict(tables)

    def update(self, batch: ReadingBatch, plan: BatchPlan | None = None) -> Detections:
        if not self.enabled or len(batch) == 0:
            return Detections.empty()
        return self._update(BatchPlan.of(batch) if plan is None else plan)

    @abc.abstractmethod
    def _update(self, plan: BatchPlan) -> Detections:
        """The detections of one planned batch (only called when enabled)."""

    def check(self, watermark_ns: int) -> Detections:
        """Time-driven detections at event-time watermark ``watermark_ns``."""
        if not self.enabled:
            return Detections.empty()
        return self._check(watermark_ns)

    def _check(self, watermark_ns: int) -> Detections:  # noqa: ARG002
        return Detections.empty()

    @abc.abstractmethod
    def describe(self, row: DetectionRow) -> Described:
        """Name, severity and one-line message of a detection."""

    @property
    def state_nbytes(self) -> int:
        return sum(t.nbytes for t in self.tables.values())

    def snapshot(self) -> Snapshot:
        """Plain arrays (copies), savable with ``np.savez``."""
        snap: Snapshot = {}
        for tname, table in self.tables.items():
            snap.update(table.snapshot(f"{tname}."))
        return snap

    def misfit(self, snap: Mapping[str, NDArray[Any]]) -> str | None:
        """Why ``snap`` does not fit this detector's tables, or None."""
        for tname, table in self.tables.items():
            reason = table.misfit(snap, f"{tname}.")
            if reason is not None:
                return f"{self.name}.{reason}"
        return None

    def restore(self, snap: Mapping[str, NDArray[Any]]) -> None:
        """Replace the state with a snapshot taken from a detector of the same config
        (ValueError, state unchanged, when it does not fit: see ``misfit``)."""
        reason = self.misfit(snap)
        if reason is not None:
            raise ValueError(f"cannot restore detector state: {reason}")
        for tname, table in self.tables.items():
            table.restore(snap, f"{tname}.")
