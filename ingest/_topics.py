"""Topic parsing: ``<prefix>/<city>/<district>/<kind>/<sensor_id>`` into tags.

The pattern is configurable, in the spirit of Telegraf's topic parsing: each
``/``-separated segment is either a literal, a capture ``{name}`` or an ignored
segment ``{_}``. The captures ``city``, ``district``, ``kind`` and ``sensor_id``
are required. Segments starting with ``_`` are reserved for UrbanPulse's own
topics (``_deadletter``, ``_alerts``) and never parse as a sensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from urbanpulse._schema import Kind

__all__ = ["MAX_SEGMENT", "TopicError", "TopicInfo", "TopicPattern", "check_tag", "split_pattern"]

_REQUIRED = ("city", "district", "kind", "sensor_id")
_CAPTURE = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")
#: Tag values we accept from a topic: printable, no MQTT wildcards, bounded.
MAX_SEGMENT = 128


class TopicError(ValueError):
    """A topic that does not match the pattern; ``reason`` is machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TopicInfo:
    city: str
    district: str
    kind: Kind
    sensor_id: str


def split_pattern(pattern: str) -> tuple[tuple[str | None, ...], tuple[tuple[int, str], ...]]:
    """The levels of a topic pattern (a literal, or None for ``{name}`` and ``{_}``)
    and its captures (level index, name); ValueError on a wildcard or empty level."""
    levels: list[str | None] = []
    captures: list[tuple[int, str]] = []
    for i, part in enumerate(pattern.split("/")):
        m = _CAPTURE.match(part)
        if m:
            levels.append(None)
            if m.group(1) != "_":
                captures.append((i, m.group(1)))
        elif "+" in part or "#" in part or "{" in part or "}" in part or not part:
            raise ValueError(
                f"topic pattern {pattern!r}: level {i + 1} ({part!r}) must be a literal, "
                "'{name}' or '{_}'"
            )
        else:
            levels.append(part)
    return tuple(levels), tuple(captures)


def check_tag(name: str, value: str) -> None:
    """Raise TopicError ``topic_bad_segment`` unless ``value`` can be a tag: not empty,
    printable, at most ``MAX_SEGMENT`` characters, no MQTT wildcard."""
    if (
        not value
        or len(value) > MAX_SEGMENT
        or not value.isprintable()
        or "+" in value
        or "#" in value
    ):
        raise TopicError(
            "topic_bad_segment",
            f"{name} is not a printable tag of <= 128 chars without '+' or '#'",
        )


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """A compiled topic pattern; ``parse`` is pure and cheap (callers cache it)."""

    pattern: str
    levels: tuple[str | None, ...]  # literal, or None for a capture/ignored level
    captures: tuple[tuple[int, str], ...]

    @classmethod
    def compile(cls, pattern: str) -> TopicPattern:
        levels, captures = split_pattern(pattern)
        names = [name for _, name in captures]
        missing = [r for r in _REQUIRED if r not in names]
        if missing:
            raise ValueError(
                f"topic pattern {pattern!r} lacks {', '.join('{' + m + '}' for m in missing)}"
            )
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"topic pattern {pattern!r} captures {sorted(dupes)} twice")
        return cls(pattern=pattern, levels=levels, captures=captures)

    @property
    def subscription(self) -> str:
        """The MQTT topic filter that receives every topic of this pattern."""
        return "/".join("+" if lvl is None else lvl for lvl in self.levels)

    def parse(self, topic: str) -> TopicInfo:
        parts = topic.split("/")
        if len(parts) != len(self.levels):
            raise TopicError(
                "topic_mismatch",
                f"{len(parts)} levels, pattern {self.pattern!r} has {len(self.levels)}",
            )
        for lvl, part in zip(self.levels, parts, strict=True):
            if lvl is not None and lvl != part:
                raise TopicError("topic_mismatch", f"expected {lvl!r}, got {part!r}")
        names = dict(self.captures)
        for i, (lvl, part) in enumerate(zip(self.levels, parts, strict=True)):
            if lvl is None and part.startswith("_"):
                what = names.get(i, f"level {i + 1}")
                raise TopicError("topic_reserved", f"{what} {part!r} starts with '_' (reserved)")
        values: dict[str, str] = {}
        for i, name in self.captures:
            part = parts[i]
            if not part:
                raise TopicError("topic_bad_segment", f"empty {name}")
            check_tag(name, part)
            values[name] = part
        try:
            kind = Kind.parse(values["kind"])
        except ValueError as exc:
            raise TopicError("topic_unknown_kind", str(exc)) from None
        return TopicInfo(
            city=values["city"],
            district=values["district"],
            kind=kind,
            sensor_id=values["sensor_id"],
        )
