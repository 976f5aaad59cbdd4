"""InfluxDB line protocol from columnar batches, without a Python object per reading.

Tags are escaped once per series and cached by dense series id (:class:`TagCache`);
a batch becomes a handful of numpy passes plus one list comprehension over
``.tolist()`` columns, joined into one ``bytes`` body.

Escaping rules (checked against InfluxDB 1.6.7 and VictoriaMetrics, see tests):

* tag keys/values and field keys: ``,`` ``=`` and space are escaped with ``\\``;
  measurements: ``,`` and space.
* Backslashes: a backslash followed by an ordinary character is written as is and
  every parser keeps it literally. A backslash that ends the text or precedes
  ``,`` ``=`` space or another backslash has no portable spelling: InfluxDB 1.x
  treats ``\\\\,`` as an escaped comma (it only looks at the previous byte, so
  the line fails to parse) while VictoriaMetrics and the 2.x ``line-protocol``
  library read ``\\\\`` as one backslash. Such a backslash is therefore treated
  like the characters below (replaced by U+FFFD, or the series is rejected), so
  the same tag value reads back identically from every backend.
* Line protocol cannot escape a newline or carriage return in a tag, and control
  characters are rejected by several parsers: they (and text that is not valid
  UTF-8, i.e. lone surrogates from ``surrogateescape``) are replaced by U+FFFD, or
  the whole series is rejected with ``invalid_tags="reject"``.
* An empty tag value is left out (InfluxDB rejects ``key=`` and treats a missing
  tag as an empty one anyway).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from urbanpulse._batch import ReadingBatch, SeriesKey, SeriesRegistry
from urbanpulse._schema import METRIC_INFO, Kind, Metric

__all__ = [
    "EncodedLines",
    "InvalidTagError",
    "InvalidTagPolicy",
    "TagCache",
    "WindowAggregatesLike",
    "encode_aggregates",
    "encode_readings",
    "escape_field_key",
    "escape_measurement",
    "escape_string_field",
    "escape_tag",
    "tag_set",
    "window_label",
]

InvalidTagPolicy = Literal["replace", "reject"]

#: Text that line protocol cannot carry in a tag: C0/C1 controls (incl. \n \r \t),
#: DEL, and lone surrogates (bytes that were not UTF-8, decoded with surrogateescape).
_INVALID_RE: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_REPLACEMENT: Final = "\ufffd"
#: A backslash that parsers disagree on (before a special char or at the end).
_AMBIGUOUS_BACKSLASH_RE: Final = re.compile(r"\\(?=[\\,= ]|\Z)")
_TAG_SPECIAL_RE: Final = re.compile(r"([,= ])")
_MEAS_SPECIAL_RE: Final = re.compile(r"([, ])")


class InvalidTagError(ValueError):
    """A tag value holds text that line protocol cannot carry (policy ``reject``)."""


def _sanitize(text: str, policy: InvalidTagPolicy, what: str) -> str:
    ambiguous = "\\" in text and _AMBIGUOUS_BACKSLASH_RE.search(text) is not None
    if not ambiguous and _INVALID_RE.search(text) is None:
        return text
    if policy == "reject":
        raise InvalidTagError(
            f"{what} {text!r} holds a control character, non-UTF-8 data or a backslash "
            "before a separator"
        )
    if ambiguous:
        text = _AMBIGUOUS_BACKSLASH_RE.sub(_REPLACEMENT, text)
    return _INVALID_RE.sub(_REPLACEMENT, text)


def escape_tag(text: str, policy: InvalidTagPolicy = "replace") -> str:
    """Escape a tag key or value (also valid for field keys)."""
    text = _sanitize(text, policy, "tag")
    return _TAG_SPECIAL_RE.sub(r"\\\1", text)


escape_field_key = escape_tag


def tag_set(pairs: Iterable[tuple[str, str]], policy: InvalidTagPolicy = "replace") -> str:
    """``",key=value"`` per pair, keys in sorted order (as InfluxDB prefers), pairs
    with an empty value left out; keys must already be valid (they are constants)."""
    return "".join(f",{k}={escape_tag(v, policy)}" for k, v in sorted(pairs) if v)


def escape_measurement(text: str, policy: InvalidTagPolicy = "replace") -> str:
    if not text:
        raise ValueError("a measurement name cannot be empty")
    text = _sanitize(text, policy, "measurement")
    return _MEAS_SPECIAL_RE.sub(r"\\\1", text)


def escape_string_field(text: str) -> str:
    """A string field value, quotes included (``"`` and ``\\`` escaped; newlines are legal)."""
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> "?"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: Escaped field key per metric code (FIWARE attribute names).
_FIELD_KEYS: Final[tuple[str, ...]] = tuple(escape_field_key(METRIC_INFO[m].field) for m in Metric)
_KIND_LABELS: Final[tuple[str, ...]] = tuple(escape_measurement(k.label) for k in Kind)


class TagCache:
    """Escaped tag sets per dense series id, built once and grown with the registry.

    ``tags(sid)`` is ``",city=...,district=...[,lane=N],sensor_id=..."`` (keys in
    sorted order, as InfluxDB prefers); ``None`` marks a series rejected by the
    ``reject`` policy, whose points are skipped.
    """

    def __init__(self, registry: SeriesRegistry, *, invalid_tags: InvalidTagPolicy = "replace"):
        self._registry = registry
        self._policy: InvalidTagPolicy = invalid_tags
        self._tags: list[str | None] = []
        self._kinds: list[int] = []
        #: measurement -> prefixes by sid (``measurement + tags``)
        self._prefixes: dict[str, list[str | None]] = {}
        #: raw-reading prefixes by sid (``kind label + tags``)
        self._raw: list[str | None] = []

    @property
    def policy(self) -> InvalidTagPolicy:
        return self._policy

    def __len__(self) -> int:
        return len(self._tags)

    def _encode_key(self, key: SeriesKey) -> str | None:
        pairs = [("city", key.city), ("district", key.district)]
        if key.lane != 0:
            pairs.append(("lane", str(key.lane)))
        pairs.append(("sensor_id", key.sensor_id))
        try:
            return tag_set(pairs, self._policy)
        except InvalidTagError:
            return None

    def sync(self) -> None:
        """Encode every series the registry gained since the last call."""
        n = len(self._registry)
        if n == len(self._tags):
            return
        for sid in range(len(self._tags), n):
            key = self._registry.key(sid)
            self._tags.append(self._encode_key(key))
            self._kinds.append(int(key.kind))
        for measurement, prefixes in self._prefixes.items():
            self._extend(measurement, prefixes)

    def _extend(self, measurement: str, prefixes: list[str | None]) -> None:
        for sid in range(len(prefixes), len(self._tags)):
            tags = self._tags[sid]
            prefixes.append(None if tags is None else measurement + tags)

    def tags(self, sid: int) -> str | None:
        if sid >= len(self._tags):
            self.sync()
        return self._tags[sid]

    def kinds(self) -> list[int]:
        """Kind code per sid (after :meth:`sync`)."""
        return self._kinds

    def prefixes(self, measurement: str) -> list[str | None]:
        """``measurement + tags`` by sid; ``measurement`` must already be escaped."""
        self.sync()
        prefixes = self._prefixes.get(measurement)
        if prefixes is None:
            prefixes = self._prefixes[measurement] = []
        if len(prefixes) < len(self._tags):
            self._extend(measurement, prefixes)
        return prefixes

    def raw_prefixes(self) -> list[str | None]:
        """``kind + tags`` by sid (raw-reading measurement per series kind)."""
        self.sync()
        prefixes = self._raw
        for sid in range(len(prefixes), len(self._tags)):
            tags = self._tags[sid]
            prefixes.append(None if tags is None else _KIND_LABELS[self._kinds[sid]] + tags)
        return prefixes


@dataclass(frozen=True, slots=True)
class EncodedLines:
    """One line-protocol body and what was left out of it."""

    #: UTF-8 line protocol, lines joined by ``\\n`` (no trailing newline); b"" if empty.
    data: bytes
    points: int
    #: Points whose every value was NaN/Inf (nothing to write).
    skipped_no_fields: int = 0
    #: Points of series rejected by the ``reject`` tag policy.
    skipped_invalid_tags: int = 0


def _float_text(values: list[float]) -> list[str]:
    return [repr(v) for v in values]


def encode_readings(batch: ReadingBatch, tags: TagCache) -> EncodedLines:
    """Raw readings: one point per message (same sid and ts_ns, increasing metric).

    Fields are named by the FIWARE attribute; ``flags=<n>i`` is added when any
    kept reading of the point has a flag. NaN/Inf values are left out.
    """
    n = len(batch)
    if n == 0:
        return EncodedLines(b"", 0)
    sid = batch.sid
    metric = batch.metric
    ts = batch.ts_ns
    value = batch.value
    # A point starts where the series, the timestamp or the metric order breaks.
    start = np.empty(n, dtype=np.bool_)
    start[0] = True
    np.not_equal(sid[1:], sid[:-1], out=start[1:])
    start[1:] |= ts[1:] != ts[:-1]
    start[1:] |= metric[1:] <= metric[:-1]
    group = np.cumsum(start) - 1
    n_groups = int(group[-1]) + 1

    prefixes = tags.raw_prefixes()
    if int(sid.max()) >= len(prefixes) or int(sid.min()) < 0:
        raise ValueError("batch holds a series id that the registry does not know")
    valid_sid = np.fromiter((p is not None for p in prefixes), dtype=np.bool_, count=len(prefixes))
    sid_ok = valid_sid[sid]
    keep = np.isfinite(value) & sid_ok
    rejected_groups = int(np.count_nonzero(~sid_ok[start]))

    rows = np.flatnonzero(keep)
    if rows.shape[0] == 0:
        return EncodedLines(b"", 0, n_groups - rejected_groups, rejected_groups)
    g = group[rows]
    first = np.empty(rows.shape[0], dtype=np.bool_)
    first[0] = True
    np.not_equal(g[1:], g[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    bounds = [*starts.tolist(), rows.shape[0]]
    n_points = starts.shape[0]

    point_flags = np.bitwise_or.reduceat(batch.flags[rows].astype(np.int64), starts)
    head_rows = rows[starts]
    keys = _FIELD_KEYS
    fields = [
        f"{keys[m]}={v!r}" for m, v in zip(metric[rows].tolist(), value[rows].tolist(), strict=True)
    ]
    heads = [prefixes[s] for s in sid[head_rows].tolist()]
    lines = [
        f"{head} {','.join(fields[a:b])}{f',flags={fl}i' if fl else ''} {t}"
        for head, a, b, fl, t in zip(
            heads,
            bounds[:-1],
            bounds[1:],
            point_flags.tolist(),
            ts[head_rows].tolist(),
            strict=True,
        )
    ]
    return EncodedLines(
        "\n".join(lines).encode("utf-8"),
        n_points,
        skipped_no_fields=n_groups - rejected_groups - n_points,
        skipped_invalid_tags=rejected_groups,
    )


class WindowAggregatesLike(Protocol):
    """Columns of closed windows, one row per (series, metric, window).

    ``window_ms`` is the window length, one int for all rows or a column.
    """

    @property
    def window_ms(self) -> int | NDArray[Any]: ...
    @property
    def sid(self) -> NDArray[Any]: ...
    @property
    def metric(self) -> NDArray[Any]: ...
    @property
    def start_ns(self) -> NDArray[Any]: ...
    @property
    def count(self) -> NDArray[Any]: ...
    @property
    def mean(self) -> NDArray[Any]: ...
    @property
    def min(self) -> NDArray[Any]: ...
    @property
    def max(self) -> NDArray[Any]: ...
    @property
    def std(self) -> NDArray[Any]: ...
    @property
    def first(self) -> NDArray[Any]: ...
    @property
    def last(self) -> NDArray[Any]: ...


_UNITS: Final = ((86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s"))


def window_label(window_ms: int) -> str:
    """``60_000 -> "1m"``, ``900_000 -> "15m"``, ``30_000 -> "30s"``, ``3_600_000 -> "1h"``."""
    if window_ms <= 0:
        raise ValueError(f"window length must be positive, got {window_ms} ms")
    for size, unit in _UNITS:
        if window_ms % size == 0:
            return f"{window_ms // size}{unit}"
    return f"{window_ms}ms"


_STATS: Final = ("mean", "min", "max", "std", "first", "last")
#: Per metric code: escaped field keys for count and each stat.
_AGG_KEYS: Final[tuple[tuple[str, ...], ...]] = tuple(
    tuple(escape_field_key(f"{METRIC_INFO[m].field}_{s}") for s in ("count", *_STATS))
    for m in Metric
)


def _agg_fields(keys: tuple[str, ...], count: int, stats: Sequence[float]) -> str:
    parts = [f"{keys[0]}={count}i"]
    isfinite = math.isfinite
    for key, v in zip(keys[1:], stats, strict=True):
        if isfinite(v):
            parts.append(f"{key}={v!r}")
    return ",".join(parts)


def encode_aggregates(aggs: WindowAggregatesLike, tags: TagCache) -> EncodedLines:
    """One point per (series, window start) in ``<kind>_<label>`` (e.g. ``air_1m``).

    Fields ``<field>_count`` (integer) and ``<field>_mean/_min/_max/_std/_first/_last``
    (any non-finite stat is left out, e.g. ``std`` of one reading); rows with
    ``count == 0`` are left out. Timestamp = window start (ns).
    """
    sid = np.asarray(aggs.sid)
    n = sid.shape[0]
    if n == 0:
        return EncodedLines(b"", 0)
    window = np.broadcast_to(np.asarray(aggs.window_ms, dtype=np.int64), (n,))
    metric = np.asarray(aggs.metric)
    start_ns = np.asarray(aggs.start_ns, dtype=np.int64)
    count = np.asarray(aggs.count).astype(np.int64, copy=False)

    # Fold rows of one (window, series, start) into one point, metrics in order.
    order = np.lexsort((metric, start_ns, sid, window))
    order = order[count[order] > 0]
    if order.shape[0] == 0:
        return EncodedLines(b"", 0)
    w_o, s_o, t_o, m_o = window[order], sid[order], start_ns[order], metric[order]
    first = np.empty(order.shape[0], dtype=np.bool_)
    first[0] = True
    np.not_equal(s_o[1:], s_o[:-1], out=first[1:])
    first[1:] |= t_o[1:] != t_o[:-1]
    first[1:] |= w_o[1:] != w_o[:-1]
    first[1:] |= m_o[1:] <= m_o[:-1]
    starts = np.flatnonzero(first)
    n_groups = starts.shape[0]

    tags.sync()
    if int(s_o.max()) >= len(tags) or int(s_o.min()) < 0:
        raise ValueError("aggregates hold a series id that the registry does not know")
    kinds = tags.kinds()
    heads: list[str | None] = []
    by_window: dict[int, tuple[list[str | None], ...]] = {}
    for w, s in zip(w_o[starts].tolist(), s_o[starts].tolist(), strict=True):
        per_kind = by_window.get(w)
        if per_kind is None:
            label = window_label(w)
            per_kind = by_window[w] = tuple(
                tags.prefixes(escape_measurement(f"{k.label}_{label}")) for k in Kind
            )
        heads.append(per_kind[kinds[s]][s])

    stats = np.stack([np.asarray(getattr(aggs, name), dtype=np.float64)[order] for name in _STATS])
    finite = np.isfinite(stats)
    # 0: every stat finite, 1: all but std (a window of one reading), 2: anything else
    shape = np.where(finite.all(axis=0), 0, np.where(finite[[0, 1, 2, 4, 5]].all(axis=0), 1, 2))
    keys = _AGG_KEYS
    fields = [
        f"{k[0]}={c}i,{k[1]}={mean!r},{k[2]}={lo!r},{k[3]}={hi!r},{k[4]}={sd!r},"
        f"{k[5]}={fst!r},{k[6]}={lst!r}"
        if sh == 0
        else f"{k[0]}={c}i,{k[1]}={mean!r},{k[2]}={lo!r},{k[3]}={hi!r},"
        f"{k[5]}={fst!r},{k[6]}={lst!r}"
        if sh == 1
        else _agg_fields(k, c, (mean, lo, hi, sd, fst, lst))
        for k, c, sh, mean, lo, hi, sd, fst, lst in zip(
            [keys[m] for m in m_o.tolist()],
            count[order].tolist(),
            shape.tolist(),
            *stats.tolist(),
            strict=True,
        )
    ]
    bounds = [*starts.tolist(), order.shape[0]]
    lines = [
        f"{head} {','.join(fields[a:b])} {t}"
        for head, a, b, t in zip(heads, bounds[:-1], bounds[1:], t_o[starts].tolist(), strict=True)
        if head is not None
    ]
    return EncodedLines(
        "\n".join(lines).encode("utf-8"),
        len(lines),
        skipped_invalid_tags=n_groups - len(lines),
    )
