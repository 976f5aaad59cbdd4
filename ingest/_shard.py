"""Topic sharding: N pipeline processes, each keeping the sensors of its shard.

Per-sensor state (windows, duplicate filter, detectors, indices) must see every
reading of a sensor in ONE process. Every process subscribes to the full topic
filter (the broker sends each message to all N), keeps the messages whose shard
key hashes to its index ``k`` of ``N`` and acknowledges the others at once
without buffering them (counted in ``skipped``). The key is the topic (one topic
is one sensor; traffic lanes share their station's topic) or, with
``by="district"``, the topic up to and including the district level, so that a
district's index rows come from one process.

The hash is CRC-32 of the key's UTF-8 bytes, modulo N: stable across processes,
machines, Python versions and ``PYTHONHASHSEED`` (``hash()`` is none of these).
See docs/scaling.md for the design and its costs.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from ingest._topics import TopicPattern

__all__ = ["ShardBy", "ShardFilter", "ShardSpec", "shard_key", "shard_of"]

ShardBy = Literal["topic", "district"]

#: Topics whose decision is remembered (a dict lookup is cheaper than encode + CRC);
#: the cache is emptied when it reaches this size, so a flood of new topics
#: cannot grow memory.
_CACHE_MAX = 1 << 16


def shard_of(key: str, count: int) -> int:
    """The shard (0 .. count-1) of ``key``: CRC-32 of its UTF-8 bytes modulo ``count``."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % count


def shard_key(topic: str, *, district_level: int | None = None) -> str:
    """The part of ``topic`` that is hashed.

    ``district_level`` None: the whole topic. Otherwise the topic's levels up to
    and including that (0-based) level; a topic with fewer levels is hashed whole.
    """
    if district_level is None:
        return topic
    end = -1
    for _ in range(district_level + 1):
        end = topic.find("/", end + 1)
        if end < 0:
            return topic
    return topic[:end]


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (``"k/N"``, 0 <= k < N)."""

    index: int
    count: int
    by: ShardBy = "topic"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"shard count must be >= 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index must be in 0..{self.count - 1}, got {self.index}")
        if self.by not in ("topic", "district"):
            raise ValueError(f"shard by must be 'topic' or 'district', got {self.by!r}")

    @classmethod
    def parse(cls, text: str, *, by: ShardBy = "topic") -> ShardSpec:
        """``"k/N"`` -> ShardSpec; ValueError naming what is wrong otherwise."""
        k, sep, n = text.strip().partition("/")
        if not sep or not k.strip().isdigit() or not n.strip().isdigit():
            raise ValueError(f"shard {text!r}: expected 'k/N' with integers 0 <= k < N")
        return cls(index=int(k), count=int(n), by=by)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def suffix(self) -> str:
        """A name part for this shard's own client id and directories."""
        return f"shard-{self.index}-of-{self.count}"


MessageHandler = Callable[[str, bytes, int], "Awaitable[None] | None"]


class ShardFilter:
    """Decides per topic whether this process owns it; wraps a message handler."""

    def __init__(self, spec: ShardSpec, *, topic_pattern: str) -> None:
        self.spec = spec
        level: int | None = None
        if spec.by == "district":
            pattern = TopicPattern.compile(topic_pattern)
            level = next(i for i, name in pattern.captures if name == "district")
        self.district_level = level
        self._cache: dict[str, bool] = {}
        #: Messages of other shards, acknowledged and dropped.
        self.skipped = 0
        #: Messages of this shard, passed on.
        self.owned = 0

    def owns(self, topic: str) -> bool:
        cache = self._cache
        mine = cache.get(topic)
        if mine is None:
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            key = shard_key(topic, district_level=self.district_level)
            mine = cache[topic] = shard_of(key, self.spec.count) == self.spec.index
        return mine

    def wrap(self, handler: MessageHandler) -> MessageHandler:
        """``handler`` for this shard's messages; others return None (acknowledged now)."""
        if self.spec.count == 1:
            return handler
        cache = self._cache
        owns = self.owns

        def on_message(topic: str, payload: bytes, qos: int) -> Awaitable[None] | None:
            mine = cache.get(topic)
            if mine is None:
                mine = owns(topic)
            if mine:
                self.owned += 1
                return handler(topic, payload, qos)
            self.skipped += 1
            return None

        return on_message
