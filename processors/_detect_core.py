"""Shared machinery of the detectors: batch plans, rounds, slot tables, detections.

Sequential semantics, vectorised execution
    Every detector is defined reading by reading: each (series, metric) stream
    (or each series' message stream) is a small state machine fed in ARRIVAL
    order. A micro-batch is executed in *rounds*: round ``r`` holds the
    ``r``-th reading of every stream present in the batch, so within a round
    no stream appears twice and the state machines of all streams advance
    together with array operations (gather state, compute, scatter back). The
    number of rounds is the largest number of readings one stream has in the
    batch (1-3 in realistic batches). Because each stream sees exactly the
    same float operations in the same order, the result is bit-identical to
    a reading-by-reading loop and does not depend on how the stream was cut
    into micro-batches.

Messages
    Rows of one message are contiguous with increasing metric codes; a new
    message starts where the series or the timestamp changes, or where the
    metric code does not increase. Detectors that need several metrics of one
    reading (humidity, loop health) or one event per message (dead sensor) run
    on messages.

Slot tables
    State is struct-of-arrays. A detector covering metrics ``M`` gives each
    series that shows one of them a block of rows (one per covered metric of
    its kind, or one per series), allocated on first sight, in ascending series
    order; ``base[sid]`` (int32, -1 = none) is the block's first row. Rows are
    never freed.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Final

import numpy as np
from numpy.typing import DTypeLike, NDArray

from urbanpulse._batch import ReadingBatch, SeriesKey
from urbanpulse._events import Severity
from urbanpulse._schema import METRIC_INFO, N_METRICS, Kind, Metric

__all__ = [
    "CHANGE",
    "END",
    "START",
    "STATE_NAMES",
    "BatchPlan",
    "Collector",
    "Column",
    "Described",
    "DetectionRow",
    "Detections",
    "DetectorBase",
    "Part",
    "SlotTable",
    "gather",
    "metric_layout",
    "per_metric",
    "rounds",
    "scatter",
    "series_layout",
    "stream_ranks",
]

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
IntP = NDArray[np.intp]
Snapshot = dict[str, NDArray[Any]]

START: Final = 0
END: Final = 1
CHANGE: Final = 2
STATE_NAMES: Final = ("start", "end", "change")

#: Passes of "first occurrence" extraction before ranking the rest by sorting.
_MAX_SCAN_PASSES: Final = 8
#: Above this many rounds, rounds are split by one sort instead of masks.
_MASK_ROUNDS: Final = 16


# --------------------------------------------------------------------------- rounds


def stream_ranks(key: I64) -> tuple[NDArray[np.int32], int]:
    """For each row, how many earlier rows (in arrival order) share its key; and
    the number of rounds (1 + the largest rank; 0 for no rows). ``key >= 0``."""
    n = int(key.shape[0])
    rank = np.zeros(n, np.int32)
    if n == 0:
        return rank, 0
    lo = int(key.min())
    k = key - lo if lo else key
    span = int(k.max()) + 1
    if span > 4 * n + 65_536:
        return _sort_ranks(k, np.arange(n, dtype=np.intp), rank, 0)
    counts = np.bincount(k, minlength=span)
    if int(counts.max()) <= 1:
        return rank, 1
    rem = np.flatnonzero(counts[k] > 1)
    first = np.full(span, n, np.intp)
    r = 0
    while rem.shape[0]:
        if r == _MAX_SCAN_PASSES:
            return _sort_ranks(k, rem, rank, r)
        r += 1
        kr = k[rem]
        first[kr] = n
        np.minimum.at(first, kr, rem)
        head = first[kr] == rem
        rem = rem[~head]
        rank[rem] = r
    return rank, r


def _sort_ranks(
    k: I64, rem: IntP, rank: NDArray[np.int32], offset: int
) -> tuple[NDArray[np.int32], int]:
    kr = k[rem]
    order = np.argsort(kr, kind="stable")
    ks = kr[order]
    new = np.empty(ks.shape[0], np.bool_)
    new[0] = True
    np.not_equal(ks[1:], ks[:-1], out=new[1:])
    pos = np.arange(ks.shape[0], dtype=np.int64)
    start = np.maximum.accumulate(np.where(new, pos, 0))
    rank[rem[order]] = (pos - start + offset).astype(np.int32)
    return rank, int(rank.max()) + 1


Part = IntP | slice


def rounds(sel: IntP, rank: NDArray[np.int32], n_rounds: int) -> list[Part]:
    """Split the (ascending) row indices ``sel`` into rounds by ``rank``.

    Returns POSITIONS into ``sel`` (``slice(None)`` when there is one round).
    """
    if sel.shape[0] == 0:
        return []
    if n_rounds <= 1:
        return [slice(None)]
    r = rank[sel]
    top = int(r.max())
    if top == 0:
        return [slice(None)]
    if top < _MASK_ROUNDS:
        return [np.flatnonzero(r == i) for i in range(top + 1)]
    order = np.argsort(r, kind="stable")
    bounds = np.cumsum(np.bincount(r))
    return [b for b in np.split(order, bounds[:-1]) if b.shape[0]]


@dataclass(frozen=True, slots=True, eq=False)
class BatchPlan:
    """A batch's columns plus the stream and message structure every detector uses.

    Compute once per batch (``BatchPlan.of``) and pass to each detector.
    """

    sid: I64
    metric: NDArray[np.uint8]
    ts_ns: I64
    value: F64
    #: Rank of each row within its (sid, metric) stream in this batch.
    rank: NDArray[np.int32]
    n_rounds: int
    #: First row of each message, message index of each row.
    msg_first: IntP
    msg_of_row: IntP
    #: Rank of each message within its series' messages in this batch.
    msg_rank: NDArray[np.int32]
    msg_rounds: int

    @classmethod
    def of(cls, batch: ReadingBatch) -> BatchPlan:
        sid = batch.sid.astype(np.int64)
        metric, ts = batch.metric, batch.ts_ns
        n = int(sid.shape[0])
        rank, n_rounds = stream_ranks(sid * N_METRICS + metric)
        new = np.empty(n, np.bool_)
        if n:
            new[0] = True
            np.not_equal(sid[1:], sid[:-1], out=new[1:])
            new[1:] |= ts[1:] != ts[:-1]
            new[1:] |= metric[1:] <= metric[:-1]
        msg_first = np.flatnonzero(new)
        msg_of_row = np.cumsum(new, dtype=np.intp) - 1
        msg_rank, msg_rounds = stream_ranks(sid[msg_first])
        return cls(
            sid,
            metric,
            ts,
            batch.value,
            rank,
            n_rounds,
            msg_first,
            msg_of_row,
            msg_rank,
            msg_rounds,
        )

    def __len__(self) -> int:
        return int(self.sid.shape[0])

    @property
    def n_messages(self) -> int:
        return int(self.msg_first.shape[0])

    def row_rounds(self, sel: IntP) -> list[Part]:
        """Rounds of the rows ``sel`` (positions into ``sel``)."""
        return rounds(sel, self.rank, self.n_rounds)

    def message_rounds(self, sel: IntP) -> list[Part]:
        """Rounds of the messages ``sel`` (positions into ``sel``)."""
        return rounds(sel, self.msg_rank, self.msg_rounds)

    def message_values(self, metric: Metric) -> tuple[F64, NDArray[np.bool_]]:
        """Per message: the value of ``metric`` (NaN where absent) and presence."""
        rows = np.flatnonzero(self.metric == metric)
        out = np.full(self.n_messages, np.nan)
        has = np.zeros(self.n_messages, np.bool_)
        mi = self.msg_of_row[rows]
        out[mi] = self.value[rows]
        has[mi] = True
        return out, has


# --------------------------------------------------------------------------- slot tables


@dataclass(frozen=True, slots=True)
class Column:
    dtype: DTypeLike
    fill: float | int
    #: Extra trailing shape (e.g. histogram bins).
    shape: tuple[int, ...] = ()


def metric_layout(metrics: Iterable[Metric]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(local slot per metric code or -1, block width per kind) for per-metric rows."""
    local = np.full(N_METRICS, -1, np.int64)
    width = np.zeros(len(Kind), np.int64)
    for m in sorted(set(metrics)):
        kind = METRIC_INFO[m].kind
        local[m] = width[kind]
        width[kind] += 1
    return local, width


def series_layout(metrics: Iterable[Metric]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """One row per series that shows any of ``metrics``."""
    local = np.full(N_METRICS, -1, np.int64)
    width = np.zeros(len(Kind), np.int64)
    for m in metrics:
        local[m] = 0
        width[METRIC_INFO[m].kind] = 1
    return local, width


_KIND_OF_METRIC: Final = np.array([METRIC_INFO[m].kind for m in Metric], np.int64)


class SlotTable:
    """Struct-of-arrays state rows for (series, covered metric), grown on demand."""

    __slots__ = ("base", "cols", "local", "n_rows", "spec", "width")

    def __init__(
        self,
        spec: Mapping[str, Column],
        local: NDArray[np.int64],
        width: NDArray[np.int64],
    ) -> None:
        self.spec = dict(spec)
        self.local = local
        self.width = width
        self.base = np.empty(0, np.int32)
        self.n_rows = 0
        self.cols: dict[str, NDArray[Any]] = {
            name: np.full((0, *c.shape), c.fill, dtype=c.dtype) for name, c in self.spec.items()
        }

    def covered(self, metric: NDArray[np.uint8]) -> NDArray[np.bool_]:
        return self.local[metric] >= 0

    def rows(self, sid: I64, metric: NDArray[np.uint8]) -> IntP:
        """Rows of (sid, metric) pairs (all covered), allocating new series."""
        if sid.shape[0] == 0:
            return np.empty(0, np.intp)
        top = int(sid.max()) + 1
        if top > self.base.shape[0]:
            grown = np.full(max(top, self.base.shape[0] * 5 // 4), -1, np.int32)
            grown[: self.base.shape[0]] = self.base
            self.base = grown
        b = self.base[sid]
        new = b < 0
        if bool(new.any()):
            ns, first = np.unique(sid[new], return_index=True)
            w = self.width[_KIND_OF_METRIC[metric[new][first]]]
            offsets = self.n_rows + np.cumsum(w) - w
            self.base[ns] = offsets.astype(np.int32)
            self._reserve(self.n_rows + int(w.sum()))
            if "sid" in self.cols:
                self.cols["sid"][offsets[0] : self.n_rows] = np.repeat(ns, w)
            b = self.base[sid]
        return (b + self.local[metric]).astype(np.intp)

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
        if sid >= self.base.shape[0] or self.base[sid] < 0 or self.local[metric] < 0:
            return None
        return int(self.base[sid]) + int(self.local[metric])

    @property
    def nbytes(self) -> int:
        return int(self.base.nbytes) + sum(int(c.nbytes) for c in self.cols.values())

    def snapshot(self, prefix: str) -> Snapshot:
        snap: Snapshot = {f"{prefix}base": self.base.copy()}
        snap[f"{prefix}n_rows"] = np.array(self.n_rows, np.int64)
        for name, col in self.cols.items():
            snap[f"{prefix}col.{name}"] = col[: self.n_rows].copy()
        return snap

    def restore(self, snap: Mapping[str, NDArray[Any]], prefix: str) -> None:
        self.base = np.array(snap[f"{prefix}base"], dtype=np.int32)
        n = int(snap[f"{prefix}n_rows"])
        self.n_rows = 0
        self.cols = {
            name: np.full((0, *c.shape), c.fill, dtype=c.dtype) for name, c in self.spec.items()
        }
        self._reserve(n)
        for name, c in self.spec.items():
            self.cols[name][:n] = np.asarray(snap[f"{prefix}col.{name}"], dtype=c.dtype)


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


class Collector:
    """Accumulates detections from the rounds of one update."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[Detections] = []

    def add(
        self,
        mask: NDArray[np.bool_],
        *,
        row: I64 | IntP,
        sid: I64,
        metric: NDArray[Any] | int,
        code: int,
        state: int,
        ts_ns: I64,
        value: F64,
        score: F64,
        ref: F64 | float = np.nan,
        label: NDArray[Any] | int = 0,
    ) -> None:
        if not bool(mask.any()):
            return
        idx = np.flatnonzero(mask)
        k = idx.shape[0]

        def pick(x: NDArray[Any] | float | int, dtype: DTypeLike) -> NDArray[Any]:
            if isinstance(x, np.ndarray):
                return x[idx].astype(dtype, copy=False)
            return np.full(k, x, dtype=dtype)

        self._parts.append(
            Detections(
                pick(row, np.int64),
                pick(sid, np.int64),
                pick(metric, np.int16),
                np.full(k, code, np.uint8),
                np.full(k, state, np.uint8),
                pick(ts_ns, np.int64),
                pick(value, np.float64),
                pick(score, np.float64),
                pick(ref, np.float64),
                pick(label, np.int16),
                np.zeros(k, np.uint8),
            )
        )

    def result(self) -> Detections:
        return Detections.concat(self._parts).sorted_by_row()


def gather(table: SlotTable, rows: IntP, names: Iterable[str]) -> list[NDArray[Any]]:
    return [table.cols[n][rows] for n in names]


def scatter(table: SlotTable, rows: IntP, values: Mapping[str, NDArray[Any]]) -> None:
    for name, v in values.items():
        table.cols[name][rows] = v


def per_metric(
    table: Mapping[Metric, Any], default: float, convert: Callable[[Any], float] = float
) -> F64:
    """A metric-indexed float array from a table (missing metrics get ``default``)."""
    out = np.full(N_METRICS, default, np.float64)
    for m, v in table.items():
        out[Metric(m)] = convert(v)
    return out


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

    def restore(self, snap: Mapping[str, NDArray[Any]]) -> None:
        """Replace the state with a snapshot taken from a detector of the same config."""
        for tname, table in self.tables.items():
            table.restore(snap, f"{tname}.")
