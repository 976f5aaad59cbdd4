"""The disk spool: a write-ahead journal of processed micro-batches.

Every micro-batch the pipeline processes becomes one *record*: the new series
keys it introduced, its readings as columns (after validation, deduplication
and flagging) and the windows it closed. A record is appended to the current
segment file and fsynced (per the fsync policy) *before* the batch's MQTT
messages are acknowledged, so an acknowledged reading is durable on local disk
even if the database is down and the process is then killed.

From the journal the pipeline can, without any other state:
- regenerate the exact line protocol of any record (raw points and closed
  aggregates), so the database writer can replay records in order after an
  outage or a restart (writes are idempotent: same series and time overwrite);
- rebuild window state after a crash, by replaying the records that follow the
  last checkpoint through the (deterministic) window kernels.

On-disk format of a segment ``seg-<first seq>.log``: records back to back, each
``MAGIC(4) | body_len u32 | crc32(body) u32 | seq u64 | body``. A record whose
header or checksum does not verify at the *tail* of the newest segment is a
torn write from a crash: it is truncated away. Anywhere else it is corruption:
the segment is moved to ``quarantine/`` and reported, never silently skipped.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from processors._windows import WindowAggregates
from urbanpulse._batch import ReadingBatch, SeriesKey
from urbanpulse._errors import UrbanPulseError
from urbanpulse._schema import Kind

__all__ = [
    "FsyncPolicy",
    "Record",
    "Spool",
    "SpoolFullError",
    "SpoolOptions",
    "SpoolStatus",
    "decode_record",
    "encode_record",
]

log = logging.getLogger("urbanpulse.spool")

MAGIC: Final = b"UPJ1"
_HEADER = struct.Struct("<4sIIQ")
_SEG_PREFIX, _SEG_SUFFIX = "seg-", ".log"

FsyncPolicy = Literal["always", "interval", "never"]


class SpoolFullError(UrbanPulseError):
    """The spool reached its size cap under the ``block`` policy."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SpoolOptions:
    directory: Path
    #: ``always``: fsync every record before it is acknowledged (at-least-once
    #: across power loss); ``interval``: at most every ``fsync_interval_s``
    #: (acknowledgements wait for it); ``never``: leave it to the OS (a crash of
    #: the process loses nothing, a power cut may).
    fsync: FsyncPolicy = "always"
    fsync_interval_s: float = 0.2
    segment_bytes: int = 64 * 1024 * 1024
    #: Cap on the spool's size on disk.
    max_bytes: int = 2 * 1024**3
    #: At the cap: ``block`` stops taking batches (so QoS 1 messages stay at the
    #: broker, and QoS 0 overflow is counted), ``drop_oldest`` deletes the oldest
    #: unwritten segment and counts its readings as lost.
    full_policy: Literal["block", "drop_oldest"] = "block"


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    new_keys: list[SeriesKey]
    batch: ReadingBatch
    closed: list[WindowAggregates]


# -- record codec ------------------------------------------------------------------------------
_AGG_FLOATS: Final = ("mean", "min", "max", "std", "first", "last")


def encode_record(
    seq: int, new_keys: list[SeriesKey], batch: ReadingBatch, closed: list[WindowAggregates]
) -> bytes:
    meta = {
        "keys": [[k.city, k.district, int(k.kind), k.sensor_id, k.lane] for k in new_keys],
        "n": len(batch),
        "aggs": [[a.window_ms, len(a)] for a in closed],
    }
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    parts = [
        struct.pack("<I", len(meta_bytes)),
        meta_bytes,
        np.ascontiguousarray(batch.sid, np.int32).tobytes(),
        np.ascontiguousarray(batch.metric, np.uint8).tobytes(),
        np.ascontiguousarray(batch.ts_ns, np.int64).tobytes(),
        np.ascontiguousarray(batch.value, np.float64).tobytes(),
        np.ascontiguousarray(batch.flags, np.uint8).tobytes(),
    ]
    for a in closed:
        parts += [
            np.ascontiguousarray(a.sid, np.int32).tobytes(),
            np.ascontiguousarray(a.metric, np.uint8).tobytes(),
            np.ascontiguousarray(a.start_ns, np.int64).tobytes(),
            np.ascontiguousarray(a.count, np.int64).tobytes(),
        ]
        parts += [np.ascontiguousarray(getattr(a, f), np.float64).tobytes() for f in _AGG_FLOATS]
    body = b"".join(parts)
    return _HEADER.pack(MAGIC, len(body), zlib.crc32(body), seq) + body


class _Reader:
    def __init__(self, body: bytes, offset: int) -> None:
        self.body = memoryview(body)
        self.pos = offset

    def take(self, dtype: type[np.generic], n: int) -> NDArray[np.generic]:
        size = np.dtype(dtype).itemsize * n
        out = np.frombuffer(self.body[self.pos : self.pos + size], dtype=dtype).copy()
        if out.shape[0] != n:
            raise ValueError("record body too short")
        self.pos += size
        return out


def decode_record(seq: int, body: bytes) -> Record:
    (meta_len,) = struct.unpack_from("<I", body, 0)
    meta = json.loads(bytes(body[4 : 4 + meta_len]))
    r = _Reader(body, 4 + meta_len)
    n = int(meta["n"])
    batch = ReadingBatch(
        sid=r.take(np.int32, n),  # type: ignore[arg-type]
        metric=r.take(np.uint8, n),  # type: ignore[arg-type]
        ts_ns=r.take(np.int64, n),  # type: ignore[arg-type]
        value=r.take(np.float64, n),  # type: ignore[arg-type]
        flags=r.take(np.uint8, n),  # type: ignore[arg-type]
    )
    closed = []
    for window_ms, m in meta["aggs"]:
        sid, metric, start, count = (
            r.take(np.int32, m),
            r.take(np.uint8, m),
            r.take(np.int64, m),
            r.take(np.int64, m),
        )
        floats = [r.take(np.float64, m) for _ in _AGG_FLOATS]
        closed.append(
            WindowAggregates(int(window_ms), sid, metric, start, count, *floats)  # type: ignore[arg-type]
        )
    keys = [SeriesKey(c, d, Kind(k), s, lane) for c, d, k, s, lane in meta["keys"]]
    return Record(seq, keys, batch, closed)


# -- the spool ---------------------------------------------------------------------------------
@dataclass(slots=True)
class SpoolStatus:
    directory: str
    segments: int
    bytes: int
    first_seq: int | None
    last_seq: int | None
    committed_seq: int
    pending_records: int
    quarantined: list[str] = field(default_factory=list)
    truncated_tail_bytes: int = 0
    dropped_records: int = 0


@dataclass(slots=True)
class _Segment:
    path: Path
    first_seq: int
    last_seq: int
    size: int


class Spool:
    """Append-only segments of records, with a committed (written to the DB) mark."""

    def __init__(self, options: SpoolOptions) -> None:
        self.opts = options
        self.dir = options.directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "quarantine").mkdir(exist_ok=True)
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._dirty = False
        self.truncated_tail_bytes = 0
        self.dropped_records = 0
        self._last_record_bytes = 0
        self.quarantined: list[str] = []
        self.committed_seq = self._read_committed()
        self._scan()
        self.next_seq = (
            (self._segments[-1].last_seq + 1) if self._segments else (self.committed_seq + 1)
        )

    # -- committed mark --------------------------------------------------------------
    @property
    def _committed_path(self) -> Path:
        return self.dir / "committed"

    def _read_committed(self) -> int:
        try:
            return int(self._committed_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            log.error("spool committed mark is unreadable; replaying everything in the spool")
            return 0

    def set_committed(self, seq: int) -> None:
        """Everything up to ``seq`` is in the database: persist the mark, drop old segments."""
        if seq <= self.committed_seq:
            return
        self.committed_seq = seq
        tmp = self._committed_path.with_suffix(".tmp")
        tmp.write_text(str(seq))
        os.replace(tmp, self._committed_path)

    # -- scanning and recovery ---------------------------------------------------------
    def _segment_paths(self) -> list[Path]:
        paths = [p for p in self.dir.iterdir() if p.name.startswith(_SEG_PREFIX)]
        return sorted(paths, key=lambda p: int(p.name[len(_SEG_PREFIX) : -len(_SEG_SUFFIX)]))

    def _scan(self) -> None:
        paths = self._segment_paths()
        for i, path in enumerate(paths):
            newest = i == len(paths) - 1
            first = last = None
            good_end = 0
            problem = ""
            for seq, _body, end in _iter_records(path):
                if seq is None:
                    problem = _body.decode()
                    break
                first = seq if first is None else first
                if last is not None and seq != last + 1:
                    problem = f"sequence gap {last} -> {seq}"
                    break
                last = seq
                good_end = end
            size = path.stat().st_size
            if problem and not (newest and problem.startswith("torn")):
                self._quarantine(path, problem)
                continue
            if good_end < size:  # a torn tail of the newest segment: truncate
                with open(path, "r+b") as f:
                    f.truncate(good_end)
                    os.fsync(f.fileno())
                self.truncated_tail_bytes += size - good_end
                log.warning(
                    "spool: truncated a torn record at the tail",
                    extra={"segment": path.name, "bytes": size - good_end},
                )
            if first is None or last is None:
                path.unlink()
                continue
            self._segments.append(_Segment(path, first, last, good_end))

    def _quarantine(self, path: Path, problem: str) -> None:
        target = self.dir / "quarantine" / path.name
        os.replace(path, target)
        self.quarantined.append(f"{path.name}: {problem}")
        log.error(
            "spool: corrupt segment quarantined", extra={"segment": path.name, "problem": problem}
        )

    # -- appending ---------------------------------------------------------------------
    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def _open_new_segment(self, seq: int) -> None:
        self._close_fd()
        path = self.dir / f"{_SEG_PREFIX}{seq:016d}{_SEG_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._segments.append(_Segment(path, seq, seq - 1, 0))
        _fsync_dir(self.dir)

    def _close_fd(self) -> None:
        if self._fd is not None:
            if self._dirty:
                os.fsync(self._fd)
                self._dirty = False
            os.close(self._fd)
            self._fd = None

    def append(
        self,
        new_keys: list[SeriesKey],
        batch: ReadingBatch,
        closed: list[WindowAggregates],
    ) -> int:
        """Append one record (not yet synced); returns its sequence number."""
        seq = self.next_seq
        data = encode_record(seq, new_keys, batch, closed)
        self._make_room(len(data))
        seg = self._segments[-1] if self._segments and self._fd is not None else None
        if seg is None or (seg.size + len(data) > self.opts.segment_bytes and seg.size > 0):
            self._open_new_segment(seq)
            seg = self._segments[-1]
        assert self._fd is not None
        os.write(self._fd, data)
        self._last_record_bytes = len(data)
        seg.size += len(data)
        seg.last_seq = seq
        self.next_seq = seq + 1
        self._dirty = True
        return seq

    def sync(self) -> None:
        if self._fd is not None and self._dirty and self.opts.fsync != "never":
            os.fsync(self._fd)
        self._dirty = False

    def _make_room(self, incoming: int) -> None:
        while self.size_bytes + incoming > self.opts.max_bytes:
            self.truncate_committed()
            if self.size_bytes + incoming <= self.opts.max_bytes:
                return
            if self.opts.full_policy == "block" or len(self._segments) <= 1:
                raise SpoolFullError(
                    f"spool {self.dir} is full ({self.size_bytes} of {self.opts.max_bytes} bytes)"
                )
            oldest = self._segments.pop(0)
            lost = oldest.last_seq - max(oldest.first_seq - 1, self.committed_seq)
            self.dropped_records += max(lost, 0)
            oldest.path.unlink()
            self.set_committed(max(self.committed_seq, oldest.last_seq))
            log.error("spool full: dropped the oldest segment", extra={"records": lost})

    def would_block(self, incoming: int | None = None) -> bool:
        """True when a block-policy spool has no room for a record (of the last size)."""
        if self.opts.full_policy != "block":
            return False
        self.truncate_committed()
        need = self._last_record_bytes if incoming is None else incoming
        return self.size_bytes + need > self.opts.max_bytes

    def truncate_committed(self, keep_from_seq: int | None = None) -> None:
        """Delete whole segments that are committed (and before ``keep_from_seq``)."""
        limit = (
            self.committed_seq
            if keep_from_seq is None
            else min(self.committed_seq, keep_from_seq - 1)
        )
        while self._segments and self._segments[0].last_seq <= limit:
            if len(self._segments) == 1:
                self._close_fd()  # the current segment: the next append starts a new one
            seg = self._segments.pop(0)
            seg.path.unlink()

    # -- reading -------------------------------------------------------------------------
    def records(self, from_seq: int) -> Iterator[Record]:
        """Records with seq >= from_seq, in order."""
        if self._fd is not None and self._dirty:
            self.sync()
        for seg in list(self._segments):
            if seg.last_seq < from_seq:
                continue
            for seq, body, _end in _iter_records(seg.path, limit=seg.size):
                if seq is None:
                    raise UrbanPulseError(f"spool segment {seg.path.name} became unreadable")
                if seq >= from_seq:
                    yield decode_record(seq, body)

    def read(self, seq: int) -> Record:
        for rec in self.records(seq):
            return rec
        raise KeyError(seq)

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    def status(self) -> SpoolStatus:
        return SpoolStatus(
            directory=str(self.dir),
            segments=len(self._segments),
            bytes=self.size_bytes,
            first_seq=self._segments[0].first_seq if self._segments else None,
            last_seq=self._segments[-1].last_seq if self._segments else None,
            committed_seq=self.committed_seq,
            pending_records=max(0, self.last_seq - self.committed_seq),
            quarantined=sorted(p.name for p in (self.dir / "quarantine").iterdir()),
            truncated_tail_bytes=self.truncated_tail_bytes,
            dropped_records=self.dropped_records,
        )

    def close(self) -> None:
        self._close_fd()


def _iter_records(path: Path, limit: int | None = None) -> Iterator[tuple[int | None, bytes, int]]:
    """(seq, body, end offset) per record; (None, b"torn..."|b"corrupt...", offset) on a bad one."""
    with open(path, "rb") as f:
        data = f.read() if limit is None else f.read(limit)
    pos = 0
    n = len(data)
    while pos < n:
        if n - pos < _HEADER.size:
            yield None, b"torn header", pos
            return
        magic, length, crc, seq = _HEADER.unpack_from(data, pos)
        if magic != MAGIC:
            yield None, f"corrupt header at offset {pos}".encode(), pos
            return
        start = pos + _HEADER.size
        end = start + length
        if end > n:
            yield None, b"torn record", pos
            return
        body = data[start:end]
        if zlib.crc32(body) != crc:
            kind = "torn" if end == n else "corrupt"
            yield None, f"{kind} checksum at offset {pos}".encode(), pos
            return
        yield seq, body, end
        pos = end


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
