"""Duplicate readings: the same (series, metric, time) seen twice.

QoS 1 is at-least-once: after a crash or a reconnect the broker redelivers
messages whose acknowledgement it never got, and a sensor may resend. Storage is
idempotent (same series and time overwrite), but a window would count a
redelivered reading twice. This filter remembers, per series, the ``depth``
most recent distinct timestamps (struct-of-arrays, ``depth`` int64 per series)
and marks a reading as a duplicate when its (series, time) is among them or
when it repeats (series, metric, time) earlier in the same batch. Redeliveries
are recent by nature, so a small depth catches them; an out-of-order reading
that is *new* is not a duplicate and still reaches the windows.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from urbanpulse._batch import ReadingBatch

__all__ = ["DuplicateFilter", "duplicate_mask"]

_EMPTY = np.iinfo(np.int64).min


def duplicate_mask(
    ring: NDArray[np.int64],
    sid: NDArray[np.int32],
    metric: NDArray[np.uint8],
    ts_ns: NDArray[np.int64],
) -> NDArray[np.bool_]:
    """Pure: which rows are duplicates of the ring (seen before) or of an earlier row."""
    n = sid.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.bool_)
    seen: NDArray[np.bool_] = np.any(ring[sid] == ts_ns[:, None], axis=1)
    # Within the batch: a later row repeating (sid, metric, ts) of an earlier row.
    order = np.lexsort((np.arange(n), ts_ns, metric, sid))
    s, m, t = sid[order], metric[order], ts_ns[order]
    repeat = np.zeros(n, dtype=np.bool_)
    repeat[1:] = (s[1:] == s[:-1]) & (m[1:] == m[:-1]) & (t[1:] == t[:-1])
    within = np.zeros(n, dtype=np.bool_)
    within[order] = repeat
    out: NDArray[np.bool_] = seen | within
    return out


def update_ring(ring: NDArray[np.int64], sid: NDArray[np.int32], ts_ns: NDArray[np.int64]) -> None:
    """Pure in spirit (updates ``ring`` in place): keep the newest distinct ts per series."""
    if sid.shape[0] == 0:
        return
    depth = ring.shape[1]
    touched = np.unique(sid)
    old_sid = np.repeat(touched, depth)
    old_ts = ring[touched].ravel()
    filled = old_ts != _EMPTY  # (negating the empty marker would overflow)
    old_sid, old_ts = old_sid[filled], old_ts[filled]
    all_sid = np.concatenate([old_sid, sid.astype(touched.dtype)])
    all_ts = np.concatenate([old_ts, ts_ns])
    order = np.lexsort((-all_ts, all_sid))  # per sid, newest first
    s, t = all_sid[order], all_ts[order]
    distinct = np.ones(s.shape[0], dtype=np.bool_)
    distinct[1:] = (s[1:] != s[:-1]) | (t[1:] != t[:-1])
    s, t = s[distinct], t[distinct]
    group_start = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    rank = np.arange(s.shape[0]) - np.repeat(group_start, np.diff(np.r_[group_start, s.shape[0]]))
    keep = rank < depth
    ring[touched] = _EMPTY
    ring[s[keep], rank[keep]] = t[keep]


class DuplicateFilter:
    def __init__(self, depth: int = 4) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.depth = depth
        self._ring = np.full((0, depth), _EMPTY, dtype=np.int64)
        self.duplicates = 0

    def _grow(self, n_series: int) -> None:
        if n_series > self._ring.shape[0]:
            extra = np.full((n_series - self._ring.shape[0], self.depth), _EMPTY, dtype=np.int64)
            self._ring = np.concatenate([self._ring, extra])

    def apply(self, batch: ReadingBatch) -> tuple[ReadingBatch, int]:
        """The batch without duplicates, and how many were removed."""
        if len(batch) == 0:
            return batch, 0
        self._grow(int(batch.sid.max()) + 1)
        dup = duplicate_mask(self._ring, batch.sid, batch.metric, batch.ts_ns)
        n_dup = int(np.count_nonzero(dup))
        kept = batch.take(~dup) if n_dup else batch
        update_ring(self._ring, kept.sid, kept.ts_ns)
        self.duplicates += n_dup
        return kept, n_dup

    @property
    def nbytes(self) -> int:
        return int(self._ring.nbytes)

    def snapshot(self) -> dict[str, NDArray[np.int64]]:
        return {"ring": self._ring.copy()}

    @classmethod
    def restore(cls, snap: Mapping[str, NDArray[np.generic]]) -> DuplicateFilter:
        ring = np.asarray(snap["ring"], dtype=np.int64)
        f = cls(depth=int(ring.shape[1]))
        f._ring = ring.copy()
        return f
