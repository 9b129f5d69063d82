"""The wire between the job and its vLLM engine process: length-prefixed pickled messages.

Each message is an 8-byte big-endian length, then a pickle (protocol 5) of a plain dict of
str, numbers, lists and numpy arrays (no torch tensors, no classes of ours: both sides
unpickle with their own package versions). Standard library only: the engine server imports
this in .venv-vllm. Pickle is safe here because both ends are this package, connected by an
anonymous pipe that only the two processes hold.

The reading side of the job never blocks without a bound: :func:`read` takes a deadline and
raises :class:`Timeout` past it, and :class:`Closed` when the other end is gone.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import time

HEADER = struct.Struct(">Q")
MAX_MESSAGE = 1 << 36  # 64 GiB: a corrupt header fails at once instead of allocating


class Closed(EOFError):
    """The other end closed the pipe (it exited or was killed)."""


class Timeout(TimeoutError):
    """No complete message before the deadline."""


def write(fd: int, obj: dict, deadline: float | None = None) -> None:
    """Send one message on file descriptor ``fd``; with a ``deadline`` (a
    ``time.monotonic()`` value) a reader that stops reading cannot block the writer past it
    (:class:`Timeout`)."""
    payload = pickle.dumps(obj, protocol=5)
    data = memoryview(HEADER.pack(len(payload)) + payload)
    while data:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([], [fd], [], wait)[1]:
                raise Timeout(f"the other end stopped reading ({len(data)} bytes unsent)")
        try:
            n = os.write(fd, data)  # partial on a non-blocking fd (the job's side)
        except BlockingIOError:
            continue
        data = data[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise Timeout(f"no reply within the time limit ({left} of {n} bytes missing)")
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            raise Closed("the other end closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read(fd: int, deadline: float | None = None) -> dict:
    """Receive one message from ``fd``; ``deadline`` is a ``time.monotonic()`` value (None:
    wait for ever, the server's side: its parent going away closes the pipe)."""
    (size,) = HEADER.unpack(_read_exact(fd, HEADER.size, deadline))
    if size > MAX_MESSAGE:
        raise Closed(f"corrupt message header (length {size})")
    return pickle.loads(_read_exact(fd, size, deadline))
