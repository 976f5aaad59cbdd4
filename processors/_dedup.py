"""Duplicate readings: the same (series, metric, time) seen twice.

QoS 1 is at-least-once: after a crash or a broker restart, messages whose
acknowledgement never reached the broker are delivered again, and publishers
republish what they could not confirm. Storage is idempotent (same series and
time overwrite), but a window would count a redelivered reading twice.

This filter remembers every (series, metric, time) whose window may still be
open: readings no older than ``retention_ns`` behind the newest event time
(the widest window + grace + idle bound is enough; anything older can only land
in a closed window, where it is late and not aggregated anyway). Each reading is
one int64 key ``sid << 44 | metric << 40 | (ts_us - base_us)`` (series ids up to
2**19, microsecond resolution, a 12-day span that is rebased as time moves),
kept in a few sorted arrays (a small LSM: new keys go to a sorted chunk,
chunks are merged and pruned every few batches), so that checking a batch is a
handful of vectorised binary searches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import numpy as np
from numpy.typing import NDArray

from urbanpulse._batch import ReadingBatch

__all__ = ["DuplicateFilter", "reading_keys"]

_SID_BITS: Final = 19  # 19 + 4 + 40 = 63 bits: keys stay positive
_METRIC_BITS: Final = 4
_TS_BITS: Final = 40
MAX_SERIES: Final = 1 << _SID_BITS
_TS_SPAN_US: Final = 1 << _TS_BITS
_MAX_CHUNKS: Final = 8

I64 = NDArray[np.int64]


def reading_keys(
    sid: NDArray[np.int32], metric: NDArray[np.uint8], ts_ns: I64, base_us: int
) -> I64:
    """Pure: one int64 per reading; ``ts_ns`` must lie in [base, base + span)."""
    rel = ts_ns // 1000 - base_us
    return (
        (sid.astype(np.int64) << (_METRIC_BITS + _TS_BITS))
        | (metric.astype(np.int64) << _TS_BITS)
        | rel
    )


def _member(sorted_keys: I64, keys: I64) -> NDArray[np.bool_]:
    if sorted_keys.shape[0] == 0:
        return np.zeros(keys.shape[0], dtype=np.bool_)
    pos = np.searchsorted(sorted_keys, keys)
    pos[pos == sorted_keys.shape[0]] = 0
    hit: NDArray[np.bool_] = sorted_keys[pos] == keys
    return hit


class DuplicateFilter:
    def __init__(self, retention_ns: int = 30 * 60 * 10**9) -> None:
        if retention_ns <= 0:
            raise ValueError("retention_ns must be positive")
        self.retention_ns = retention_ns
        self._base_us: int | None = None
        self._main: I64 = np.empty(0, dtype=np.int64)
        self._chunks: list[I64] = []
        self._max_ts_ns = -1
        self.duplicates = 0

    def _keys_for(self, batch: ReadingBatch) -> tuple[I64, NDArray[np.bool_]]:
        """Keys of the rows, and which rows are recent enough to be tracked."""
        assert self._base_us is not None
        ts_us = batch.ts_ns // 1000
        tracked = (ts_us >= self._base_us) & (ts_us < self._base_us + _TS_SPAN_US)
        ts = np.where(tracked, batch.ts_ns, self._base_us * 1000)
        return reading_keys(batch.sid, batch.metric, ts, self._base_us), tracked

    def _rebase(self, newest_ns: int) -> None:
        """Move the key origin so that the retained span and the future fit."""
        new_base = (newest_ns - self.retention_ns) // 1000 - 1
        if self._base_us is not None:
            shift = new_base - self._base_us
            merged = self._all_keys()
            ts_rel = merged & (_TS_SPAN_US - 1)
            keep = ts_rel >= shift
            self._main = (merged[keep] & ~np.int64(_TS_SPAN_US - 1)) | (ts_rel[keep] - shift)
            self._main.sort()
            self._chunks = []
        self._base_us = new_base

    def _all_keys(self) -> I64:
        if not self._chunks:
            return self._main
        merged = np.concatenate([self._main, *self._chunks])
        merged.sort()
        return merged

    def apply(self, batch: ReadingBatch) -> tuple[ReadingBatch, int]:
        """The batch without duplicates, and how many were removed."""
        n = len(batch)
        if n == 0:
            return batch, 0
        if int(batch.sid.max()) >= MAX_SERIES:
            raise ValueError(f"more than {MAX_SERIES} series")
        newest = max(self._max_ts_ns, int(batch.ts_ns.max()))
        if self._base_us is None or newest // 1000 - self._base_us >= _TS_SPAN_US // 2:
            self._rebase(newest)
        keys, tracked = self._keys_for(batch)
        seen = _member(self._main, keys)
        for chunk in self._chunks:
            seen |= _member(chunk, keys)
        # Within the batch: a later row repeating an earlier row's key.
        _, first = np.unique(keys, return_index=True)
        repeat = np.ones(n, dtype=np.bool_)
        repeat[first] = False
        dup = tracked & (seen | repeat)
        n_dup = int(np.count_nonzero(dup))
        kept = batch.take(~dup) if n_dup else batch
        new = np.unique(keys[tracked & ~dup])
        if new.shape[0]:
            self._chunks.append(new)
        self._max_ts_ns = newest
        if len(self._chunks) >= _MAX_CHUNKS:
            self._compact()
        self.duplicates += n_dup
        return kept, n_dup

    def _compact(self) -> None:
        assert self._base_us is not None
        merged = self._all_keys()
        horizon_us = (self._max_ts_ns - self.retention_ns) // 1000 - self._base_us
        self._main = merged[(merged & (_TS_SPAN_US - 1)) >= horizon_us]
        self._chunks = []

    @property
    def tracked_readings(self) -> int:
        return int(self._main.shape[0] + sum(c.shape[0] for c in self._chunks))

    @property
    def nbytes(self) -> int:
        return int(self._main.nbytes + sum(c.nbytes for c in self._chunks))

    def snapshot(self) -> dict[str, I64]:
        return {
            "keys": self._all_keys().copy(),
            "meta": np.array(
                [
                    self.retention_ns,
                    -1 if self._base_us is None else self._base_us,
                    self._max_ts_ns,
                ],
                dtype=np.int64,
            ),
        }

    @classmethod
    def restore(cls, snap: Mapping[str, NDArray[np.generic]]) -> DuplicateFilter:
        retention_ns, base_us, max_ts_ns = (int(x) for x in np.asarray(snap["meta"]))
        f = cls(retention_ns)
        f._base_us = None if base_us < 0 else base_us
        f._max_ts_ns = max_ts_ns
        f._main = np.asarray(snap["keys"], dtype=np.int64).copy()
        return f
