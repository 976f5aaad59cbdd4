"""Tumbling event-time windows per (series, metric), as numpy kernels.

Keys
    ``sm = sid * N_METRICS + metric`` (int64) names one (series, metric) stream.
    Window index ``win = ts_ns // window_ns`` (floor division; ``ts_ns >= 0``), so
    window ``win`` covers ``[win * window_ns, (win + 1) * window_ns)``. A window is
    the pair ``(sm, win)``.

Statistics
    Each window is held as a mergeable partial: ``count, mean, m2`` (Welford/Chan:
    ``m2`` = sum of squared deviations from the mean), ``min, max``, ``first_ts,
    first`` (value at the smallest ts; ties -> earliest arrival) and ``last_ts,
    last`` (value at the largest ts; ties -> latest arrival). Two partials of the
    same window combine with Chan et al.'s parallel formula, so the result does not
    depend on how readings were split into batches or processes (up to float
    rounding of mean/m2). Emitted ``std`` is the SAMPLE standard deviation
    (ddof=1), NaN when ``count < 2``. Values are assumed finite (ingest rejects
    NaN and out-of-range readings).

Watermark and closing (all integer maths, no overflow for any int64 ts >= 0)
    * per series: ``watermark[sid] = max ts_ns seen for sid - grace_ns`` (every
      reading counts as seen, late or not);
    * globally: ``idle_bound = max ts_ns seen by this instance - grace_ns -
      idle_ns``, so the last window of a sensor that went silent is still emitted;
    * the close horizon of a sid is ``max(watermark[sid], idle_bound)``; window
      ``[start, end)`` of that sid is closed once ``horizon >= end``. Horizons never
      move backwards, so a closed window never reopens.

One ``TumblingWindows.update(batch)``
    1. A reading is LATE iff its window end ``<=`` the horizon of its sid as it was
       BEFORE this batch (its window was already emitted, or would be closed
       immediately). Late readings are not aggregated; ``late_mask`` reports them
       (the caller stores them raw with ``ReadingFlag.LATE`` and counts them).
    2. All other readings of the batch are aggregated into the open windows
       (first, even when the batch itself then moves the watermark past them).
    3. The watermarks are advanced with the whole batch, and every open window
       whose end is ``<=`` its sid's new horizon is closed and returned.
    Lateness is therefore decided per micro-batch: within one batch, arrival order
    does not matter, except for ``first``/``last`` ties.

    The idle bound is per instance: when series are partitioned across processes,
    each process's idle bound only sees its own series.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from urbanpulse._batch import ReadingBatch
from urbanpulse._schema import N_METRICS

__all__ = [
    "DEFAULT_WINDOW_SPECS",
    "MultiWindows",
    "TumblingWindows",
    "WindowAggregates",
    "WindowPartials",
    "WindowSpec",
    "WindowState",
    "WindowUpdate",
    "close_horizon",
    "finalize",
    "merge_partials",
    "partial_aggregate",
    "series_metric",
]

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
Path = Literal["auto", "dense", "sort"]

_NS_PER_MS: Final = 1_000_000
_I64_MAX: Final = int(np.iinfo(np.int64).max)
#: A product of key ranges below this fits an int64 group key.
_KEY_LIMIT: Final = 1 << 62
#: Dense path when the bin table is at most this many bins per reading (+ a floor).
_DENSE_BINS_PER_READING: Final = 16
_DENSE_BINS_FLOOR: Final = 1 << 16
#: Refuse an explicitly requested dense table beyond this (2 GiB of int64 bins).
_DENSE_MAX_BINS: Final = 1 << 28


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Configuration of one tumbling window width (no runtime state)."""

    window_ms: int
    grace_ms: int
    #: A window also closes once the newest event time of the whole instance is
    #: this far past its end (+ grace), even if its own sensor went silent.
    idle_ms: int = 300_000

    def __post_init__(self) -> None:
        if self.window_ms <= 0:
            raise ValueError(f"window_ms must be > 0, got {self.window_ms}")
        if self.grace_ms < 0 or self.idle_ms < 0:
            raise ValueError("grace_ms and idle_ms must be >= 0")

    @property
    def window_ns(self) -> int:
        return self.window_ms * _NS_PER_MS

    @property
    def grace_ns(self) -> int:
        return self.grace_ms * _NS_PER_MS

    @property
    def idle_ns(self) -> int:
        return self.idle_ms * _NS_PER_MS


DEFAULT_WINDOW_SPECS: Final = (WindowSpec(60_000, 10_000), WindowSpec(900_000, 10_000))


def series_metric(sid: NDArray[np.int32] | I64, metric: NDArray[np.uint8]) -> I64:
    """The int64 stream key ``sid * N_METRICS + metric``."""
    return sid.astype(np.int64) * N_METRICS + metric


# --------------------------------------------------------------------------- partials


@dataclass(frozen=True, slots=True)
class WindowPartials:
    """Mergeable per-window partial statistics, one row per (sm, win).

    Rows are sorted by ``(sm, win)`` and unique.
    """

    sm: I64
    win: I64
    count: I64
    mean: F64
    m2: F64
    min: F64
    max: F64
    first_ts: I64
    first: F64
    last_ts: I64
    last: F64

    def __len__(self) -> int:
        return int(self.sm.shape[0])

    @classmethod
    def empty(cls) -> WindowPartials:
        i, f = np.empty(0, np.int64), np.empty(0, np.float64)
        return cls(i, i, i, f, f, f, f, i, f, i, f)

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(self, c.name).nbytes) for c in fields(self))

    def take(self, index: NDArray[np.bool_] | NDArray[np.intp] | I64) -> WindowPartials:
        return WindowPartials(*(getattr(self, c.name)[index] for c in fields(self)))

    def columns(self) -> dict[str, NDArray[np.int64] | NDArray[np.float64]]:
        return {c.name: getattr(self, c.name) for c in fields(self)}


_PARTIAL_COLUMNS: Final = tuple(c.name for c in fields(WindowPartials))


def _dense_key_fits(sm_lo: int, sm_hi: int, win_lo: int, win_hi: int) -> bool:
    return (sm_hi - sm_lo + 1) * (win_hi - win_lo + 1) < _KEY_LIMIT


def _pair_key(sm: I64, win: I64) -> tuple[I64, Callable[[I64], tuple[I64, I64]]]:
    """An order-preserving int64 key for (sm, win) pairs, and its decoder.

    Offsets both columns by their minimum; if the product of their ranges would
    overflow (a batch spanning a huge time range), the window column is replaced
    by its rank among the distinct window indices.
    """
    sm_lo, sm_hi = int(sm.min()), int(sm.max())
    win_lo, win_hi = int(win.min()), int(win.max())
    if _dense_key_fits(sm_lo, sm_hi, win_lo, win_hi):
        span = win_hi - win_lo + 1

        def decode(key: I64) -> tuple[I64, I64]:
            if span == 1:
                return key + sm_lo, np.full(key.shape[0], win_lo, np.int64)
            q, r = np.divmod(key, span)
            q += sm_lo
            r += win_lo
            return q, r

        key = sm - sm_lo
        if span > 1:
            key *= span
            key += win
            key -= win_lo
        return key, decode
    uniq_win, win_rank = np.unique(win, return_inverse=True)
    n_win = int(uniq_win.shape[0])
    # sm < 2**35 (int32 sid) and distinct windows <= rows, so this only fails for
    # tables of more than 2**27 rows.
    if (sm_hi - sm_lo + 1) * n_win >= _KEY_LIMIT:
        raise ValueError("too many distinct (series, window) keys for an int64 key")

    def decode_ranked(key: I64) -> tuple[I64, I64]:
        q, r = np.divmod(key, n_win)
        return q + sm_lo, uniq_win[r]

    return (sm - sm_lo) * n_win + win_rank.astype(np.int64), decode_ranked


def _reduce_groups(
    gi: NDArray[np.intp],
    count: I64,
    win: I64,
    ts_ns: I64,
    value: F64,
    window_ns: int,
) -> tuple[F64, F64, F64, F64, I64, F64, I64, F64]:
    """Per-group statistics for dense group ids ``gi`` with known ``count``s."""
    n = int(value.shape[0])
    n_groups = int(count.shape[0])
    mean = np.bincount(gi, weights=value, minlength=n_groups).astype(np.float64, copy=False)
    mean /= count
    dev = mean[gi]
    np.subtract(value, dev, out=dev)
    np.multiply(dev, dev, out=dev)
    m2 = np.bincount(gi, weights=dev, minlength=n_groups).astype(np.float64, copy=False)
    vmin: F64 = np.full(n_groups, np.inf)
    np.minimum.at(vmin, gi, value)
    vmax: F64 = np.full(n_groups, -np.inf)
    np.maximum.at(vmax, gi, value)
    order = np.arange(n, dtype=np.int64)
    bits = n.bit_length()
    if window_ns <= _I64_MAX >> bits:
        # One reduction per end: (offset in window, arrival index) packed in an
        # int64; all readings of a group share the window, so the offset orders ts.
        packed = win * window_ns
        np.subtract(ts_ns, packed, out=packed)
        packed <<= bits
        packed |= order
        lo = np.full(n_groups, _I64_MAX, dtype=np.int64)
        np.minimum.at(lo, gi, packed)
        hi = np.full(n_groups, -1, dtype=np.int64)
        np.maximum.at(hi, gi, packed)
        mask = (1 << bits) - 1
        i_first, i_last = lo & mask, hi & mask
    else:
        i_first = _arg_extreme(gi, n_groups, ts_ns, order, first=True)
        i_last = _arg_extreme(gi, n_groups, ts_ns, order, first=False)
    return (
        mean,
        m2,
        vmin,
        vmax,
        ts_ns[i_first],
        value[i_first],
        ts_ns[i_last],
        value[i_last],
    )


def _arg_extreme(
    gi: NDArray[np.intp], n_groups: int, ts_ns: I64, order: I64, *, first: bool
) -> I64:
    """Index of the min-ts (earliest arrival) or max-ts (latest arrival) reading."""
    n = int(ts_ns.shape[0])
    if first:
        ext = np.full(n_groups, _I64_MAX, dtype=np.int64)
        np.minimum.at(ext, gi, ts_ns)
        cand = ts_ns == ext[gi]
        idx = np.full(n_groups, n, dtype=np.int64)
        np.minimum.at(idx, gi[cand], order[cand])
    else:
        ext = np.full(n_groups, -1, dtype=np.int64)
        np.maximum.at(ext, gi, ts_ns)
        cand = ts_ns == ext[gi]
        idx = np.full(n_groups, -1, dtype=np.int64)
        np.maximum.at(idx, gi[cand], order[cand])
    return idx


def _groups(key: I64, path: Path) -> tuple[NDArray[np.intp], I64, I64]:
    """Dense group ids of an int64 key column: ``(gi, sorted distinct keys, counts)``.

    ``"dense"`` bins ``key - key.min()`` with ``bincount`` over the whole key range
    (no sort); ``"sort"`` argsorts the key; ``"auto"`` takes dense when the range is
    at most ~16 bins per row.
    """
    n = int(key.shape[0])
    lo = int(key.min())
    n_bins = int(key.max()) - lo + 1
    if path == "auto":
        dense = n_bins <= _DENSE_BINS_PER_READING * n + _DENSE_BINS_FLOOR
    else:
        dense = path == "dense"
        if dense and n_bins > _DENSE_MAX_BINS:
            raise ValueError(f"{n_bins} bins: key range too large for the dense path")
    if dense:
        g = key - lo if lo else key
        count_all = np.bincount(g, minlength=n_bins)
        keys = np.flatnonzero(count_all.astype(np.bool_))
        count = count_all[keys]
        rank = np.zeros(n_bins, dtype=np.intp)
        rank[keys] = np.arange(keys.shape[0])
        if lo:
            keys += lo
        return rank[g], keys.astype(np.int64, copy=False), count.astype(np.int64, copy=False)
    srt = np.argsort(key)
    ks = key[srt]
    new_group = np.empty(n, dtype=np.bool_)
    new_group[0] = True
    np.not_equal(ks[1:], ks[:-1], out=new_group[1:])
    # (a bool -> int64 cumsum takes a slow casting loop; int32 does not)
    gid_sorted = np.cumsum(new_group, dtype=np.int32)
    gid_sorted -= 1
    gi = np.empty(n, dtype=np.intp)
    gi[srt] = gid_sorted
    starts = np.flatnonzero(new_group)
    return gi, ks[starts], np.diff(starts, append=n).astype(np.int64, copy=False)


def partial_aggregate(
    sm: I64,
    ts_ns: I64,
    value: F64,
    window_ns: int,
    *,
    path: Path = "auto",
) -> WindowPartials:
    """Per-(sm, window) partials of one batch; row order is arrival order.

    Groups by the key ``(sm - sm_min) * span + (win - win_min)``: ``path="dense"``
    bins it with ``bincount`` (fast when the batch spans few windows), ``"sort"``
    argsorts it, ``"auto"`` picks dense when the key range is small relative to
    the batch. Statistics are then reduced with ``bincount``/``ufunc.at``.
    """
    if sm.shape[0] == 0:
        return WindowPartials.empty()
    win = ts_ns // window_ns
    key, decode = _pair_key(sm, win)
    gi, keys, count = _groups(key, path)
    sm_out, win_out = decode(keys)
    return WindowPartials(
        sm_out, win_out, count, *_reduce_groups(gi, count, win, ts_ns, value, window_ns)
    )


def _combine(a: WindowPartials, b: WindowPartials) -> WindowPartials:
    """Row-wise combine of the same windows; ``a`` arrived before ``b``.

    ``a`` rows may be empty (``count == 0``, as in an empty ring slot).
    """
    n = a.count + b.count
    delta = b.mean - a.mean
    wb = b.count / n
    b_first = b.first_ts < a.first_ts
    b_first |= a.count == 0
    b_last = b.last_ts >= a.last_ts
    return WindowPartials(
        a.sm,
        b.win,
        n,
        a.mean + delta * wb,
        a.m2 + b.m2 + delta * delta * (a.count * wb),
        np.minimum(a.min, b.min),
        np.maximum(a.max, b.max),
        np.where(b_first, b.first_ts, a.first_ts),
        np.where(b_first, b.first, a.first),
        np.where(b_last, b.last_ts, a.last_ts),
        np.where(b_last, b.last, a.last),
    )


def _match(
    a: WindowPartials, b: WindowPartials
) -> tuple[I64, I64, NDArray[np.intp], NDArray[np.bool_]]:
    """Common order-preserving keys of a and b, where b's rows sort into a, and
    which of them are already in a."""
    key, _ = _pair_key(np.concatenate([a.sm, b.sm]), np.concatenate([a.win, b.win]))
    ka, kb = key[: len(a)], key[len(a) :]
    pos = np.searchsorted(ka, kb)
    hit = ka[np.minimum(pos, len(a) - 1)] == kb
    return ka, kb, pos, hit


def merge_partials(a: WindowPartials, b: WindowPartials) -> WindowPartials:
    """Union of two partial tables, combining rows of the same window.

    Pure. For ``first``/``last`` ties, ``a`` counts as the earlier arrival.
    """
    if len(b) == 0:
        return a
    if len(a) == 0:
        return b
    ka, kb, pos, hit = _match(a, b)
    new = np.flatnonzero(~hit)
    hits = np.flatnonzero(hit)
    n_new = int(new.shape[0])
    out_a = np.arange(len(a)) + np.searchsorted(kb[new], ka)
    out_b = pos[new] + np.arange(n_new)
    both = _combine(a.take(pos[hits]), b.take(hits))
    b_new = b.take(new)
    cols = []
    for name in _PARTIAL_COLUMNS:
        col_a = getattr(a, name)
        out = np.empty(len(a) + n_new, dtype=col_a.dtype)
        out[out_a] = col_a
        out[out_a[pos[hits]]] = getattr(both, name)
        out[out_b] = getattr(b_new, name)
        cols.append(out)
    return WindowPartials(*cols)


# --------------------------------------------------------------------------- output


@dataclass(frozen=True, slots=True)
class WindowAggregates:
    """Closed windows of one width, sorted by ``(sid, start_ns, metric)``."""

    window_ms: int
    sid: NDArray[np.int32]
    metric: NDArray[np.uint8]
    start_ns: I64
    count: I64
    mean: F64
    min: F64
    max: F64
    std: F64
    first: F64
    last: F64

    def __len__(self) -> int:
        return int(self.sid.shape[0])

    @classmethod
    def empty(cls, window_ms: int) -> WindowAggregates:
        f = np.empty(0, np.float64)
        i = np.empty(0, np.int64)
        return cls(window_ms, np.empty(0, np.int32), np.empty(0, np.uint8), i, i, f, f, f, f, f, f)


def finalize(p: WindowPartials, window_ms: int) -> WindowAggregates:
    """Emitted statistics of partials, sorted by ``(sid, start_ns, metric)``."""
    if len(p) == 0:
        return WindowAggregates.empty(window_ms)
    sid, metric = np.divmod(p.sm, N_METRICS)
    win = p.win
    if len(p) > 1:
        d_sid, d_win, d_met = np.diff(sid), np.diff(win), np.diff(metric)
        in_order = (d_sid > 0) | ((d_sid == 0) & ((d_win > 0) | ((d_win == 0) & (d_met > 0))))
        if not bool(in_order.all()):
            order = np.lexsort((metric, win, sid))
            p, sid, metric, win = p.take(order), sid[order], metric[order], win[order]
    std = np.full(len(p), np.nan)
    several = p.count >= 2
    std[several] = np.sqrt(p.m2[several] / (p.count[several] - 1))
    return WindowAggregates(
        window_ms=window_ms,
        sid=sid.astype(np.int32),
        metric=metric.astype(np.uint8),
        start_ns=win * (window_ms * _NS_PER_MS),
        count=p.count,
        mean=p.mean,
        min=p.min,
        max=p.max,
        std=std,
        first=p.first,
        last=p.last,
    )


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    """What one ``update`` did: windows it closed, readings it refused as late."""

    closed: WindowAggregates
    late_mask: NDArray[np.bool_]


# --------------------------------------------------------------------------- state


def close_horizon(sid_max_ts_ns: I64, global_max_ts_ns: int, spec: WindowSpec) -> I64:
    """Per series, the index of the first window that is not closed.

    Pure: ``sid_max_ts_ns`` is the max event ts per sid (-1 = nothing seen), and a
    window ``win`` of sid ``s`` is closed iff ``win < result[s]``, i.e. iff its end
    ``<= max(sid_max_ts - grace, global_max_ts - grace - idle)``.
    """
    w = spec.window_ns
    idle = (global_max_ts_ns - spec.grace_ns - spec.idle_ns) // w
    return np.maximum((sid_max_ts_ns - spec.grace_ns) // w, idle)


_EMPTY_SLOT: Final[dict[str, int | float]] = {
    "win": _I64_MAX,
    "count": 0,
    "mean": 0.0,
    "m2": 0.0,
    "min": np.inf,
    "max": -np.inf,
    "first_ts": _I64_MAX,
    "first": np.nan,
    "last_ts": -1,
    "last": np.nan,
}


def _empty_slots(n_sid: int, ring: int) -> WindowPartials:
    """``n_sid`` series worth of empty ring slots (``sm`` = slot // ring)."""
    n = n_sid * N_METRICS * ring
    sm = np.arange(n, dtype=np.int64) // ring
    cols = {name: np.full(n, fill, dtype=_dtype_of(name)) for name, fill in _EMPTY_SLOT.items()}
    return _partials(sm=sm, **cols)


def _dtype_of(name: str) -> type[np.int64] | type[np.float64]:
    return np.int64 if name in {"sm", "win", "count", "first_ts", "last_ts"} else np.float64


def _partials(**cols: NDArray[np.generic]) -> WindowPartials:
    """Typed construction of partials from named columns (copies, casts)."""

    def i64(name: str) -> I64:
        return np.array(cols[name], dtype=np.int64)

    def f64(name: str) -> F64:
        return np.array(cols[name], dtype=np.float64)

    return WindowPartials(
        sm=i64("sm"),
        win=i64("win"),
        count=i64("count"),
        mean=f64("mean"),
        m2=f64("m2"),
        min=f64("min"),
        max=f64("max"),
        first_ts=i64("first_ts"),
        first=f64("first"),
        last_ts=i64("last_ts"),
        last=f64("last"),
    )


def _sorted_rows(p: WindowPartials) -> WindowPartials:
    """``p`` in ``(sm, win)`` order (a no-op when it already is)."""
    if len(p) > 1:
        d_sm, d_win = np.diff(p.sm), np.diff(p.win)
        if not bool(((d_sm > 0) | ((d_sm == 0) & (d_win > 0))).all()):
            return p.take(np.lexsort((p.win, p.sm)))
    return p


class WindowState:
    """Runtime state of one window width: open windows and watermarks.

    Open windows live in a ring of ``ring = ceil(grace / window) + 1`` slots per stream:
    window ``win`` of stream ``sm`` sits in slot ``sm * ring + win % ring`` (columns
    of a ``WindowPartials``; empty slots have ``count == 0``). After each update
    every open window of a sid lies in ``[(max_ts - grace) // window, max_ts //
    window]``, at most ``ring`` windows, so slots never collide; a batch folds into
    its slots with gathers/scatters, with no search and no re-sorting of the state.
    ``pending`` holds closed windows not yet emitted (only after ``merge``/``restore``).

    ``sid_max_ts_ns[sid]``: newest event ts seen per series (-1 = none);
    ``global_max_ts_ns``: newest seen at all (-1 = none). ``spec`` is read-only
    configuration.
    """

    __slots__ = ("global_max_ts_ns", "pending", "ring", "sid_max_ts_ns", "slots", "spec")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.ring = -(-spec.grace_ns // spec.window_ns) + 1  # ceil(grace / window) + 1
        self.slots = _empty_slots(0, self.ring)
        self.pending = WindowPartials.empty()
        self.sid_max_ts_ns = np.empty(0, np.int64)
        self.global_max_ts_ns = -1

    @property
    def open_windows(self) -> int:
        return int(np.count_nonzero(self.slots.count)) + len(self.pending)

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes + self.pending.nbytes + int(self.sid_max_ts_ns.nbytes)

    # -- watermarks

    def observe(self, sid: I64, ts_ns: I64) -> None:
        """Advance the watermarks with a batch's (sid, ts) columns."""
        if sid.shape[0] == 0:
            return
        self._reserve(int(sid.max()) + 1)
        np.maximum.at(self.sid_max_ts_ns, sid, ts_ns)
        self.global_max_ts_ns = max(self.global_max_ts_ns, int(ts_ns.max()))

    def horizon(self) -> I64:
        """``close_horizon`` per known sid."""
        return close_horizon(self.sid_max_ts_ns, self.global_max_ts_ns, self.spec)

    def horizon_of(self, sid: I64) -> I64:
        """``close_horizon`` for the given sids (unseen sids: idle bound only)."""
        known = self.sid_max_ts_ns
        if sid.shape[0] and int(sid.max()) < known.shape[0]:
            max_ts = known[sid]
        else:
            max_ts = np.full(sid.shape[0], -1, np.int64)
            inside = sid < known.shape[0]
            max_ts[inside] = known[sid[inside]]
        return close_horizon(max_ts, self.global_max_ts_ns, self.spec)

    def _reserve(self, n_sid: int) -> None:
        have = self.sid_max_ts_ns.shape[0]
        if n_sid <= have:
            return
        n_sid = max(n_sid, have + have // 4)  # amortised growth, modest slack
        grown = np.full(n_sid, -1, np.int64)
        grown[:have] = self.sid_max_ts_ns
        self.sid_max_ts_ns = grown
        old, new = self.slots, _empty_slots(n_sid, self.ring)
        for name in _PARTIAL_COLUMNS[1:]:
            getattr(new, name)[: len(old)] = getattr(old, name)
        self.slots = new

    # -- windows

    def fold(self, sm: I64, ts_ns: I64, value: F64) -> None:
        """Aggregate readings into their open windows (later arrivals than the state).

        Precondition (kept by ``TumblingWindows.update``): the watermarks already
        include these readings and none of their windows is closed.
        """
        if sm.shape[0] == 0:
            return
        ring, w = self.ring, self.spec.window_ns
        win = ts_ns // w
        slot = win % ring
        slot += sm * ring
        gi, keys, count = _groups(slot, "auto")
        part = WindowPartials(
            self.slots.sm[keys],
            win[_first_of(gi, keys.shape[0])],
            count,
            *_reduce_groups(gi, count, win, ts_ns, value, w),
        )
        both = _combine(self.slots.take(keys), part)
        for name in _PARTIAL_COLUMNS[1:]:
            getattr(self.slots, name)[keys] = getattr(both, name)

    def pop_closed(self) -> WindowPartials:
        """Remove and return, sorted by ``(sm, win)``, the windows the watermarks closed."""
        per_sid = self._grid_shape()
        closed = np.flatnonzero((self.slots.win.reshape(per_sid) < self.horizon()[:, None]).ravel())
        out = self._pop(closed)
        if len(self.pending):
            out, self.pending = merge_partials(self.pending, out), WindowPartials.empty()
        return out

    def pop_all(self) -> WindowPartials:
        out = merge_partials(self.pending, self._pop(np.flatnonzero(self.slots.count)))
        self.pending = WindowPartials.empty()
        return out

    def _grid_shape(self) -> tuple[int, int]:
        return (int(self.sid_max_ts_ns.shape[0]), N_METRICS * self.ring)

    def _pop(self, index: NDArray[np.intp]) -> WindowPartials:
        if index.shape[0] == 0:
            return WindowPartials.empty()
        out = _sorted_rows(self.slots.take(index))
        for name, fill in _EMPTY_SLOT.items():
            getattr(self.slots, name)[index] = fill
        return out

    def rows(self) -> WindowPartials:
        """All open windows (and pending closed ones), sorted by ``(sm, win)``; copies."""
        live = self.slots.take(np.flatnonzero(self.slots.count))
        return merge_partials(self.pending, _sorted_rows(live))

    # -- persistence and scale-out

    def snapshot(self) -> dict[str, NDArray[np.int64] | NDArray[np.float64]]:
        """Plain arrays (copies), savable with ``np.savez``: the open windows as rows
        sorted by ``(sm, win)``, plus the watermarks."""
        snap = dict(self.rows().columns())
        snap["sid_max_ts_ns"] = self.sid_max_ts_ns.copy()
        snap["global_max_ts_ns"] = np.array(self.global_max_ts_ns, dtype=np.int64)
        return snap

    @classmethod
    def restore(cls, snap: Mapping[str, NDArray[np.generic]], spec: WindowSpec) -> WindowState:
        rows = _partials(**{name: snap[name] for name in _PARTIAL_COLUMNS})
        return cls._assemble(
            spec,
            rows,
            np.array(snap["sid_max_ts_ns"], dtype=np.int64),
            int(snap["global_max_ts_ns"]),
        )

    def merge(self, other: WindowState) -> WindowState:
        """Combined state of two instances (e.g. two processes over a partition of
        the series); ``self`` counts as the earlier arrival on ties."""
        if other.spec != self.spec:
            raise ValueError(f"cannot merge states of {self.spec} and {other.spec}")
        a, b = self.sid_max_ts_ns, other.sid_max_ts_ns
        max_ts = np.full(max(a.shape[0], b.shape[0]), -1, np.int64)
        max_ts[: a.shape[0]] = a
        max_ts[: b.shape[0]] = np.maximum(max_ts[: b.shape[0]], b)
        return WindowState._assemble(
            self.spec,
            merge_partials(self.rows(), other.rows()),
            max_ts,
            max(self.global_max_ts_ns, other.global_max_ts_ns),
        )

    @classmethod
    def _assemble(
        cls, spec: WindowSpec, rows: WindowPartials, sid_max_ts_ns: I64, global_max_ts_ns: int
    ) -> WindowState:
        state = cls(spec)
        state.global_max_ts_ns = global_max_ts_ns
        n_sid = int(sid_max_ts_ns.shape[0])
        if len(rows):
            n_sid = max(n_sid, int(rows.sm.max()) // N_METRICS + 1)
        state._reserve(n_sid)
        state.sid_max_ts_ns[: sid_max_ts_ns.shape[0]] = sid_max_ts_ns
        if len(rows) == 0:
            return state
        closed = rows.win < state.horizon_of(rows.sm // N_METRICS)
        state.pending = rows.take(closed)
        live = rows.take(~closed)
        slot = live.sm * state.ring + live.win % state.ring
        for name in _PARTIAL_COLUMNS[1:]:
            getattr(state.slots, name)[slot] = getattr(live, name)
        return state


def _first_of(gi: NDArray[np.intp], n_groups: int) -> NDArray[np.intp]:
    """Index of one member of each group."""
    first = np.empty(n_groups, dtype=np.intp)
    first[gi] = np.arange(gi.shape[0])
    return first


# --------------------------------------------------------------------------- wrappers


class TumblingWindows:
    """Stateful tumbling windows of one width over ``ReadingBatch`` micro-batches."""

    def __init__(self, spec: WindowSpec, state: WindowState | None = None) -> None:
        if state is not None and state.spec != spec:
            raise ValueError("state was built for another spec")
        self.spec = spec
        self.state = WindowState(spec) if state is None else state

    @property
    def open_windows(self) -> int:
        return self.state.open_windows

    @property
    def state_nbytes(self) -> int:
        return self.state.nbytes

    def update(self, batch: ReadingBatch) -> WindowUpdate:
        state, window_ns = self.state, self.spec.window_ns
        sid = batch.sid.astype(np.int64)
        late = np.zeros(sid.shape[0], dtype=np.bool_)
        closing = WindowPartials.empty()
        if sid.shape[0]:
            ts = batch.ts_ns
            win = ts // window_ns
            late = win < state.horizon_of(sid)
            state.observe(sid, ts)
            sm = sid * N_METRICS + batch.metric
            # readings whose window this very batch closes bypass the ring
            closes_now = win < state.horizon_of(sid)
            closes_now &= ~late
            if bool(closes_now.any()):
                keep = ~(late | closes_now)
                closing = partial_aggregate(
                    sm[closes_now], ts[closes_now], batch.value[closes_now], window_ns
                )
            else:
                keep = ~late
            popped = state.pop_closed()
            if bool(keep.all()):
                state.fold(sm, ts, batch.value)
            else:
                state.fold(sm[keep], ts[keep], batch.value[keep])
        else:
            popped = state.pop_closed()
        closed = merge_partials(popped, closing)
        return WindowUpdate(finalize(closed, self.spec.window_ms), late)

    def flush_all(self) -> WindowAggregates:
        """Close and return every open window (watermarks are kept)."""
        return finalize(self.state.pop_all(), self.spec.window_ms)

    def snapshot(self) -> dict[str, NDArray[np.int64] | NDArray[np.float64]]:
        snap = self.state.snapshot()
        for name in ("window_ms", "grace_ms", "idle_ms"):
            snap[name] = np.array(getattr(self.spec, name), dtype=np.int64)
        return snap

    @classmethod
    def restore(cls, snap: Mapping[str, NDArray[np.generic]]) -> TumblingWindows:
        spec = WindowSpec(int(snap["window_ms"]), int(snap["grace_ms"]), int(snap["idle_ms"]))
        return cls(spec, WindowState.restore(snap, spec))


class MultiWindows:
    """Several window widths over the same batches (one ``TumblingWindows`` each).

    The late mask that counts is the one of the finest width (``finest_ms``); with
    equal grace for all widths it contains every coarser width's late readings.
    """

    def __init__(self, specs: Sequence[WindowSpec] = DEFAULT_WINDOW_SPECS) -> None:
        if not specs:
            raise ValueError("at least one window spec is needed")
        widths = [s.window_ms for s in specs]
        if len(set(widths)) != len(widths):
            raise ValueError(f"duplicate window widths: {widths}")
        self.windows = {s.window_ms: TumblingWindows(s) for s in sorted(specs, key=_width)}
        self.finest_ms = min(widths)

    @property
    def open_windows(self) -> int:
        return sum(w.open_windows for w in self.windows.values())

    @property
    def state_nbytes(self) -> int:
        return sum(w.state_nbytes for w in self.windows.values())

    def update(self, batch: ReadingBatch) -> dict[int, WindowUpdate]:
        return {ms: w.update(batch) for ms, w in self.windows.items()}

    def flush_all(self) -> dict[int, WindowAggregates]:
        return {ms: w.flush_all() for ms, w in self.windows.items()}

    def snapshot(self) -> dict[str, NDArray[np.int64] | NDArray[np.float64]]:
        """One flat dict (``"<window_ms>ms.<name>"`` keys), savable with ``np.savez``."""
        return {
            f"{ms}ms.{name}": arr
            for ms, w in self.windows.items()
            for name, arr in w.snapshot().items()
        }

    @classmethod
    def restore(cls, snap: Mapping[str, NDArray[np.generic]]) -> MultiWindows:
        groups: dict[str, dict[str, NDArray[np.generic]]] = {}
        for key, arr in snap.items():
            prefix, _, name = key.partition(".")
            groups.setdefault(prefix, {})[name] = arr
        restored = [TumblingWindows.restore(g) for g in groups.values()]
        multi = cls([w.spec for w in restored])
        multi.windows = {w.spec.window_ms: w for w in sorted(restored, key=_tw_width)}
        return multi


def _width(spec: WindowSpec) -> int:
    return spec.window_ms


def _tw_width(w: TumblingWindows) -> int:
    return w.spec.window_ms
