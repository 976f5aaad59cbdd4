"""Line-protocol file sink for demos: rotating ``*.lp`` files to load later.

Load with ``influx write --bucket B --file urbanpulse-000001.lp`` (2.x, ns is the
default precision) or ``curl --data-binary @urbanpulse-000001.lp
'http://host:8086/write?db=D&precision=ns'`` (1.x).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import BinaryIO

from urbanpulse._errors import OutputError, RetryableOutputError

__all__ = ["LineProtocolFileWriter"]

_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EAGAIN, errno.EINTR, errno.EDQUOT})


class LineProtocolFileWriter:
    """Appends line-protocol bodies to ``<prefix>-NNNNNN.lp`` files in ``directory``.

    A new file is started when the current one would exceed ``rotate_bytes``
    (a single body larger than that gets a file of its own; bodies are never
    split). Numbering continues after files already in the directory. ``close()``
    fsyncs the file and the directory.
    """

    def __init__(
        self,
        directory: Path | str,
        rotate_bytes: int = 64 * 1024 * 1024,
        *,
        prefix: str = "urbanpulse",
    ) -> None:
        if rotate_bytes <= 0:
            raise ValueError("rotate_bytes must be positive")
        self.directory = Path(directory)
        self.rotate_bytes = rotate_bytes
        self.prefix = prefix
        self._pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)\.lp$")
        self._file: BinaryIO | None = None
        self._size = 0
        self._closed = False
        #: Every file this writer created, in order.
        self.paths: list[Path] = []
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            existing = [
                int(m.group(1))
                for p in self.directory.iterdir()
                if (m := self._pattern.match(p.name)) is not None
            ]
        except OSError as exc:
            raise OutputError(f"cannot use {self.directory}: {exc}") from exc
        self._seq = max(existing, default=0)

    def _open_next(self) -> BinaryIO:
        self._finish_current()
        self._seq += 1
        path = self.directory / f"{self.prefix}-{self._seq:06d}.lp"
        handle = path.open("xb")
        self.paths.append(path)
        self._file = handle
        self._size = 0
        return handle

    def _finish_current(self) -> None:
        if self._file is not None:
            handle, self._file = self._file, None
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()

    def write(self, lines: bytes) -> None:
        if self._closed:
            raise OutputError("write to a closed LineProtocolFileWriter")
        if not lines:
            return
        data = lines if lines.endswith(b"\n") else lines + b"\n"
        try:
            handle = self._file
            if handle is None or (self._size > 0 and self._size + len(data) > self.rotate_bytes):
                handle = self._open_next()
            handle.write(data)
            handle.flush()
            self._size += len(data)
        except OSError as exc:
            message = f"writing line protocol to {self.directory}: {exc}"
            if exc.errno in _TRANSIENT_ERRNOS:
                raise RetryableOutputError(message) from exc
            raise OutputError(message) from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._finish_current()
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise OutputError(f"closing line-protocol files in {self.directory}: {exc}") from exc
