"""Dead letters: every refused message is counted by reason and republished.

The copy goes to ``<deadletter_prefix>/<reason>/<original topic>`` as a JSON
envelope, so an operator can subscribe to ``urbanpulse/_deadletter/#`` and see
exactly what was refused and why. A copy that cannot be published (broker down)
is still counted, under ``publish_failed``.
"""

from __future__ import annotations

import base64
from collections import Counter, deque
from collections.abc import Callable, Iterable

import orjson

from urbanpulse._batch import DeadLetter

__all__ = ["DeadLetterSink", "envelope"]

#: Returns False when the copy could not be sent.
Publish = Callable[[str, bytes], bool]

_MAX_COPY_BYTES = 64 * 1024


def envelope(letter: DeadLetter) -> bytes:
    """The JSON body of a dead-letter copy."""
    body: dict[str, object] = {
        "reason": letter.reason,
        "detail": letter.detail,
        "topic": letter.topic,
        "received_ns": letter.received_ns,
        "size": len(letter.payload),
    }
    raw = letter.payload[:_MAX_COPY_BYTES]
    if len(letter.payload) > _MAX_COPY_BYTES:
        body["truncated"] = True
    try:
        body["payload"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        body["payload_b64"] = base64.b64encode(raw).decode("ascii")
    return orjson.dumps(body)


class DeadLetterSink:
    def __init__(self, prefix: str, publish: Publish | None, *, keep_recent: int = 100) -> None:
        self._prefix = prefix.rstrip("/")
        self._publish = publish
        self.by_reason: Counter[str] = Counter()
        self.publish_failed = 0
        self.recent: deque[DeadLetter] = deque(maxlen=keep_recent)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def topic_for(self, letter: DeadLetter) -> str:
        return f"{self._prefix}/{letter.reason}/{letter.topic}"

    def handle(self, letters: Iterable[DeadLetter]) -> None:
        for letter in letters:
            self.by_reason[letter.reason] += 1
            self.recent.append(letter)
            if self._publish is not None and not self._publish(
                self.topic_for(letter), envelope(letter)
            ):
                self.publish_failed += 1
