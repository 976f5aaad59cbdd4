"""A bounded on-disk outbox: JSON lines plus an ack cursor, fsynced.

``queue.jsonl`` holds ``{"seq": n, "record": {...}}`` lines in append order;
``acked`` holds the highest sequence number delivered (written to a temporary file,
fsynced and renamed). On open, lines with ``seq <= acked`` are skipped and a torn
last line (a crash mid-write) is ignored and counted. The log is compacted (live
lines rewritten, fsynced, renamed) once more than half of it is acknowledged.
Beyond ``max_records`` the oldest record is dropped and counted in ``dropped``.
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any

from urbanpulse._errors import OutputError

__all__ = ["DiskQueue", "write_atomic"]

_COMPACT_MIN = 256


def write_atomic(path: Path, text: str, *, fsync: bool) -> None:
    """Replace ``path`` with ``text``: a temporary file, flushed (fsynced), renamed."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def _line(seq: int, record: dict[str, Any]) -> bytes:
    return json.dumps({"seq": seq, "record": record}, separators=(",", ":")).encode() + b"\n"


class DiskQueue:
    def __init__(self, directory: str | Path, *, max_records: int, fsync: bool = True) -> None:
        self.path = Path(directory)
        self._max = max_records
        self._fsync = fsync
        self._log_path = self.path / "queue.jsonl"
        self._ack_path = self.path / "acked"
        self._items: deque[tuple[int, dict[str, Any]]] = deque()
        self._acked = 0
        self._dead_lines = 0
        self.dropped = 0
        self.torn = 0
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._load()
            self._log = open(self._log_path, "ab")  # noqa: SIM115 - held for the queue's life
        except OSError as exc:
            raise OutputError(f"alert queue {self.path}: {exc}") from exc
        self._next = (self._items[-1][0] if self._items else self._acked) + 1

    def _load(self) -> None:
        if self._ack_path.exists():
            self._acked = int(self._ack_path.read_text().strip() or 0)
        if not self._log_path.exists():
            return
        with open(self._log_path, "rb") as fh:
            for line in fh:
                try:
                    item = json.loads(line)
                    seq, record = int(item["seq"]), item["record"]
                except (ValueError, KeyError, TypeError):
                    self.torn += 1
                    continue
                if seq <= self._acked:
                    self._dead_lines += 1
                    continue
                self._items.append((seq, record))
        while len(self._items) > self._max:
            self._items.popleft()
            self.dropped += 1
        if self.torn:
            # rewrite so a torn tail does not swallow the next append's first line
            self._compact()

    def __len__(self) -> int:
        return len(self._items)

    def append(self, record: dict[str, Any], *, sync: bool = True) -> None:
        """Append and (with ``sync``) fsync; ``sync=False`` leaves the fsync to a later
        :meth:`sync` (group commit: several records, one fsync)."""
        seq = self._next
        self._next += 1
        try:
            self._log.write(_line(seq, record))
            self._log.flush()
            if self._fsync and sync:
                os.fsync(self._log.fileno())
        except OSError as exc:
            raise OutputError(f"alert queue {self.path}: {exc}") from exc
        self._items.append((seq, record))
        if len(self._items) > self._max:
            dropped_seq, _ = self._items.popleft()
            self.dropped += 1
            self._write_ack(dropped_seq)

    def sync(self) -> None:
        """fsync what was appended with ``sync=False``."""
        if not self._fsync:
            return
        try:
            os.fsync(self._log.fileno())
        except OSError as exc:
            raise OutputError(f"alert queue {self.path}: {exc}") from exc

    def peek(self) -> dict[str, Any] | None:
        return self._items[0][1] if self._items else None

    def pop(self) -> None:
        """The head was delivered: acknowledge it durably."""
        if not self._items:
            return
        seq, _ = self._items.popleft()
        self._write_ack(seq)

    def _write_ack(self, seq: int) -> None:
        self._acked = seq
        self._dead_lines += 1
        try:
            write_atomic(self._ack_path, str(seq), fsync=self._fsync)
        except OSError as exc:
            raise OutputError(f"alert queue {self.path}: {exc}") from exc
        if self._dead_lines >= _COMPACT_MIN and self._dead_lines > len(self._items):
            self._compact()

    def _compact(self) -> None:
        tmp = self._log_path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            for seq, record in self._items:
                fh.write(_line(seq, record))
            fh.flush()
            if self._fsync:
                os.fsync(fh.fileno())
        old = getattr(self, "_log", None)
        if old is not None:
            old.close()
        os.replace(tmp, self._log_path)
        self._dead_lines = 0
        self.torn = 0 if old is not None else self.torn
        if old is not None:
            self._log = open(self._log_path, "ab")  # noqa: SIM115

    def close(self) -> None:
        self._log.close()
