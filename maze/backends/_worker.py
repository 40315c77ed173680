"""The worker process of the local backend.

Started by :mod:`maze.backends.local` as ``python -c ...`` with one end of a
socket pair; speaks length-prefixed frames (``multiprocessing.connection``)
over it. One task at a time, so capturing ``print()`` process-wide is safe.

From the driver: a call header (function, constants, the descriptors of the
upstream values), then the small frames of those values.
To the driver, in order: ``started``, any number of ``log``, then ``done``
with the descriptors of the output values, then their small frames. Because
everything shares one ordered socket, the driver sees a task's start and its
prints before its result. Values are packed as :mod:`._packing` describes.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from maze.backends import _packing
from maze.core.execute import captured_output, error_of, gather_params, run_body
from maze.core.protocol import TaskError

_FUNCTION_CACHE_SIZE = 256


def _watch_parent(parent: int) -> None:
    # If the driver dies without closing us (SIGKILL), don't outlive it.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def main(fd: int, parent: int) -> None:
    try:
        _serve(fd, parent)
    except (EOFError, OSError):
        pass  # the driver went away (closed, or exited before we were ready): nothing to report to


def _serve(fd: int, parent: int) -> None:
    # Ctrl-C in a terminal signals the whole process group; the driver decides
    # what an interrupt means (it cancels the run and stops us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    conn = Connection(fd)
    host, pid = socket.gethostname(), os.getpid()
    functions: OrderedDict[str, Any] = OrderedDict()
    conn.send_bytes(pickle.dumps(("ready", pid, host)))
    while True:
        header = conn.recv_bytes()
        call_id, task_id, fn_key, fn_bytes, constants, input_keys, descriptors, outputs = pickle.loads(header)
        packs = _packing.receive(conn.recv_bytes, descriptors)
        conn.send_bytes(pickle.dumps(("started", call_id, time.time())))

        def emit(stream: str, text: str, _call_id: str = call_id) -> None:
            conn.send_bytes(pickle.dumps(("log", _call_id, stream, text, time.time())))

        started = time.time()
        result: dict[str, Any] | None = None
        error: TaskError | None = None
        try:
            func = functions.get(fn_key)
            if func is None:
                func = cloudpickle.loads(fn_bytes)
                functions[fn_key] = func
                if len(functions) > _FUNCTION_CACHE_SIZE:
                    functions.popitem(last=False)
            inputs = {k: _packing.unpack(p) for k, p in zip(input_keys, packs)}
        except BaseException as exc:  # noqa: BLE001 - e.g. a module the worker cannot import
            error = _wrapped(exc, f"task {task_id!r} could not be loaded in the worker")
        else:
            with captured_output(emit):
                result, error = run_body(func, gather_params(constants, inputs), outputs, task_id)
            del inputs
        out: list[_packing.Packed] = []
        if result is not None:
            try:
                out = [_packing.pack(v, str(parent)) for v in result.values()]
            except BaseException as exc:  # noqa: BLE001
                result, error = None, _wrapped(exc, f"the result of task {task_id!r} could not be pickled")
        keys = list(result) if result is not None else []
        conn.send_bytes(pickle.dumps(
            ("done", call_id, keys, error, started, time.time(), [p.descriptor() for p in out])
        ))
        _packing.send(conn.send_bytes, out)
        # Drop references now, so an idle worker does not hold the last task's data.
        result, out, packs = None, [], []


def _wrapped(exc: BaseException, context: str) -> TaskError:
    inner = error_of(exc)
    return TaskError(inner.error_type, f"{context}: {inner.error}", inner.traceback)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
