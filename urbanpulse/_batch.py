"""Columnar micro-batches and the dense series registry.

Everything downstream of the ingest boundary works on these columns; no
per-reading Python object exists past the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from urbanpulse._schema import Kind

__all__ = ["DeadLetter", "ReadingBatch", "SeriesKey", "SeriesRegistry"]


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """Identity of one sensor stream; becomes the tag set of every stored point."""

    city: str
    district: str
    kind: Kind
    sensor_id: str
    #: Traffic lane (FIWARE ``laneId``, >= 1); 0 when the reading has none.
    lane: int = 0


class SeriesRegistry:
    """Assigns dense integer ids (0, 1, 2, ...) to series keys.

    Dense ids index every struct-of-arrays state in ``processors``. Ids are never
    reused in a process lifetime.
    """

    def __init__(self) -> None:
        self._ids: dict[SeriesKey, int] = {}
        self._keys: list[SeriesKey] = []

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key: SeriesKey) -> int | None:
        return self._ids.get(key)

    def resolve(self, key: SeriesKey) -> int:
        sid = self._ids.get(key)
        if sid is None:
            sid = len(self._keys)
            self._ids[key] = sid
            self._keys.append(key)
        return sid

    def key(self, sid: int) -> SeriesKey:
        return self._keys[sid]

    def all_keys(self) -> list[SeriesKey]:
        """All keys, indexed by series id (a copy)."""
        return list(self._keys)


def _no_flags() -> NDArray[np.uint8]:
    return np.empty(0, dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """One micro-batch of readings in long format, one row per (series, metric, time).

    Rows that came from the same message are contiguous and in increasing metric
    order, so a writer can fold them back into one point per message.
    """

    sid: NDArray[np.int32]
    metric: NDArray[np.uint8]
    ts_ns: NDArray[np.int64]
    value: NDArray[np.float64]
    flags: NDArray[np.uint8] = field(default_factory=_no_flags)

    def __post_init__(self) -> None:
        n = self.sid.shape[0]
        if self.flags.shape[0] != n:
            if self.flags.shape[0] != 0:
                raise ValueError("flags column has the wrong length")
            object.__setattr__(self, "flags", np.zeros(n, dtype=np.uint8))
        for name in ("metric", "ts_ns", "value"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"column {name} has {getattr(self, name).shape[0]} rows, sid {n}")

    def __len__(self) -> int:
        return int(self.sid.shape[0])

    @classmethod
    def empty(cls) -> ReadingBatch:
        return cls(
            sid=np.empty(0, np.int32),
            metric=np.empty(0, np.uint8),
            ts_ns=np.empty(0, np.int64),
            value=np.empty(0, np.float64),
            flags=np.empty(0, np.uint8),
        )

    @classmethod
    def concat(cls, batches: list[ReadingBatch]) -> ReadingBatch:
        if not batches:
            return cls.empty()
        return cls(
            sid=np.concatenate([b.sid for b in batches]),
            metric=np.concatenate([b.metric for b in batches]),
            ts_ns=np.concatenate([b.ts_ns for b in batches]),
            value=np.concatenate([b.value for b in batches]),
            flags=np.concatenate([b.flags for b in batches]),
        )

    def with_flags(self, flags: NDArray[np.uint8]) -> ReadingBatch:
        """The same readings with ``flags`` OR-ed into their flags column."""
        return ReadingBatch(self.sid, self.metric, self.ts_ns, self.value, self.flags | flags)

    def take(self, mask_or_index: NDArray[np.bool_] | NDArray[np.intp]) -> ReadingBatch:
        return ReadingBatch(
            sid=self.sid[mask_or_index],
            metric=self.metric[mask_or_index],
            ts_ns=self.ts_ns[mask_or_index],
            value=self.value[mask_or_index],
            flags=self.flags[mask_or_index],
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the pipeline refused, with a machine-readable reason."""

    topic: str
    payload: bytes
    reason: str
    detail: str
    received_ns: int
