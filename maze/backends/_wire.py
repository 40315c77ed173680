"""Length-prefixed frames over a socket, read and written in bulk.

The framing is ``multiprocessing.connection``'s (a 4-byte big-endian length, or
-1 and an 8-byte length, then the bytes), so either end may still use a
``Connection``. What differs is the reading and writing: a ``Connection``
makes two reads per frame (the length, then the body) and one write per frame.
When the driver is busy, a worker's results pile up in its socket; when a call
ends, the driver may line several calls up behind it on the same worker. Here
one read takes everything that has arrived, and the frames put during one pass
of the driver's I/O thread go out in one write.

No locks: each side says which of its locks guards a reader or a writer.
"""

from __future__ import annotations

import os
import select
import struct
from collections.abc import Callable
from typing import Any

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_CHUNK = 1 << 16


class FrameReader:
    """The frames arriving on a file descriptor (a blocking socket)."""

    __slots__ = ("_fd", "_buf", "_pos", "_poll")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._pos = 0   # where the first frame not taken yet begins in ``_buf``
        self._poll = select.poll()   # not select(): a descriptor may be numbered past FD_SETSIZE
        self._poll.register(fd, select.POLLIN)

    def fill(self, size: int = _CHUNK) -> None:
        """Read what has arrived, waiting for at least one byte; ``EOFError`` when the other end has closed."""
        data = os.read(self._fd, size)
        if not data:
            raise EOFError
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def has_frame(self) -> bool:
        """Whether a whole frame has been read and not taken."""
        return self._missing() == 0

    def has_frames(self, n: int) -> bool:
        """Whether the next ``n`` frames not taken have all been read whole (reading them would not wait)."""
        buf, pos, end = self._buf, self._pos, len(self._buf)
        for _ in range(n):
            header = _header(buf, pos)
            if header is None:
                return False
            pos += header[0] + header[1]
            if pos > end:
                return False
        return True

    def pending(self) -> bool:
        """Whether anything has arrived that is not taken: a frame, part of one, or bytes not read yet."""
        return len(self._buf) > self._pos or self.readable()

    def readable(self) -> bool:
        """Whether bytes not read yet have arrived: a read would not wait."""
        return bool(self._poll.poll(0))

    def recv_bytes(self) -> bytes:
        """The next frame, reading (and waiting) until it is whole."""
        while (missing := self._missing()) != 0:
            self.fill(max(missing, _CHUNK))
        buf, pos = self._buf, self._pos
        header = _header(buf, pos)
        assert header is not None   # the frame is whole
        head, size = header
        end = pos + head + size
        frame = bytes(buf[pos + head:end])
        self._pos = end
        return frame

    def _missing(self) -> int:
        """How many more bytes the next frame needs (at least what its length needs while that is incomplete)."""
        buf, pos = self._buf, self._pos
        have = len(buf) - pos
        header = _header(buf, pos)
        if header is None:
            return (4 if have < 4 else 12) - have
        return max(0, header[0] + header[1] - have)


def _header(buf: bytearray, pos: int) -> tuple[int, int] | None:
    """The length of the frame header at ``pos`` and of the frame's bytes; None while the header is incomplete."""
    have = len(buf) - pos
    if have < 4:
        return None
    (size,) = _SHORT.unpack_from(buf, pos)
    if size != -1:
        return 4, size
    if have < 12:
        return None
    return 12, _LONG.unpack_from(buf, pos + 4)[0]


class FrameWriter:
    """Frames put for a socket, sent together by :meth:`flush`.

    A writer made with ``send`` never waits: :meth:`flush` sends what the
    socket takes now and keeps the rest for the next call (the driver's side,
    whose I/O thread must go on reading while a busy worker does not read; it
    calls again when the socket is writable). Without, it writes everything,
    waiting as needed (a worker's side).
    """

    __slots__ = ("_fd", "_send", "_out", "_left")

    def __init__(self, fd: int, send: Callable[[memoryview], int] | None = None) -> None:
        self._fd = fd
        self._send = send
        self._out: list[Any] = []
        self._left = memoryview(b"")   # bytes a non-waiting flush could not send yet

    def put(self, data: Any) -> None:
        """Queue one frame: ``bytes`` or a byte-formatted ``memoryview``."""
        size = len(data)
        self._out.append(_SHORT.pack(size) if size <= 0x7FFFFFFF else _SHORT.pack(-1) + _LONG.pack(size))
        self._out.append(data)

    @property
    def queued(self) -> bool:
        """Whether anything put has not been sent yet."""
        return bool(self._out) or bool(self._left)

    def flush(self) -> bool:
        """Send what was put, in order, in one write where the socket takes it all; whether all is sent.

        ``OSError`` if the other end has gone.
        """
        if self._out:
            out, self._out = self._out, []
            if self._left:
                out.insert(0, self._left)
            self._left = memoryview(b"".join(out))
        view = self._left
        try:
            while view:
                view = view[self._send(view) if self._send is not None else os.write(self._fd, view):]
        except BlockingIOError:
            pass
        self._left = view
        return not view
