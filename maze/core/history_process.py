"""The history writer process: what crosses to it, how it is started, and its loop.

:class:`~maze.core.history.HistoryWriter` hands batches of messages to a
process of its own, so that encoding them and committing them to SQLite never
competes with the scheduler for the driver's interpreter lock. The process
starts at the first flush, or a second after the first message, so that its
start does not take cores from the first run's tasks; a writer closed before
then writes its one batch in a thread instead.
Each side has one job here:

- The driver packs a batch (:func:`pack`): one pickle of the raw items, where
  only builtin values cross as themselves, each ``finish_task`` result value
  that is not exactly JSON as a :class:`~maze.core.history_values.Kept` and any
  other object as a :class:`~maze.core.history_values.Foreign`
  (:mod:`maze.core.history_values`). The writer never imports the user's
  code: it unpickles only frames from its own parent, over its private pipe,
  and even those only with builtins and those two classes (:func:`unpack`).
- :class:`Link` starts the writer (``python -I -S``: only the standard
  library and the maze package's own folder on its path, so it starts
  quickly and runs the driver's maze; in a session of its own, so a
  terminal's Ctrl-C stops the driver's run, not the recording; at nice 10, as
  background work), sends frames, and reads the writer's
  replies on a thread of its own: ``booted`` (it runs, and opens the file,
  which may wait for other processes' locks), ``ready`` (the file is open),
  ``refused`` (it cannot be opened: said once, and the runs go on
  unrecorded), ``flushed`` (a flush token) and ``warning`` (logged on the
  driver's ``maze`` logger). If no Python process
  can be started (an interpreter embedded in another program), the same loop
  runs in a thread of the driver instead, with the same pipes.
- The writer (:func:`serve`) reads frames, commits what has arrived as one
  transaction (:class:`~maze.core.history_store.Recording`), and answers
  flush tokens once what came before them is committed. It ends when
  told to close, or when its parent is gone: end of file on the pipe, or a
  changed parent pid (a forked child of the driver may hold the pipe open). In
  both cases it first commits everything handed over, held-back output
  included, so a driver killed with SIGKILL loses only the messages it had
  not handed over yet.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import select
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .history_values import Foreign, Kept, foreign, json_text, plain_result, with_kept_results

if TYPE_CHECKING:
    from .history_store import Recording

_log = logging.getLogger("maze")
_HEADER = struct.Struct("<Q")  # the length of the pickle that follows
_READY_S = 30.0  # how long a starting writer may take to say it is ready before one runs in a thread instead
_NICE = 10  # the writer's nice value: background work, it yields the cores to the driver and its workers
_PARENT_CHECK_S = 1.0  # how often a writer with nothing to read checks that its parent is still there
_WIRE = {("maze.core.history_values", "Kept"): Kept, ("maze.core.history_values", "Foreign"): Foreign}
# The writer's command line: the maze package's own folder comes first on the path, so the writer runs
# the same maze as the driver (an isolated interpreter without site-packages would find none).
_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from maze.core.history_process import main; main(sys.argv[2:])"


# -- what crosses ------------------------------------------------------------------------------------

class _Pickler(pickle.Pickler):
    # Called for objects that are not exact builtin values only, so a batch of
    # plain messages pickles at C speed.
    def reducer_override(self, obj: Any) -> Any:
        if obj is Kept or obj is Foreign or type(obj) is Kept or type(obj) is Foreign:
            return NotImplemented
        stand_in = foreign(obj)
        return Foreign, (stand_in.plain, stand_in.key)


def _dumps(value: Any) -> bytes:
    out = io.BytesIO()
    _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return out.getvalue()


def pack(batch: list[tuple[Any, ...]]) -> bytes:
    """One frame for the writer: ``batch`` pickled with stand-ins for what is not a builtin value."""
    items = batch
    for at, item in enumerate(batch):
        # The common case, a result of plain values, costs a look at each value and no copy.
        if len(item) == 3 and item[2]["type"] == "finish_task" and not plain_result(item[2]["data"]):
            if items is batch:
                items = list(batch)
            items[at] = item[0], item[1], {"type": "finish_task", "data": with_kept_results(item[2]["data"])}
    try:
        payload = _dumps(items)
    except Exception:  # noqa: BLE001 - e.g. data nested too deep for pickle: only the items that have it change
        payload = _dumps([packable for packable in map(_packable, items) if packable is not None])
    return _HEADER.pack(len(payload)) + payload


def _packable(item: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """``item``, or its message with its data as JSON makes it (result values apart) if it cannot be pickled.

    ``None`` (the message is left out) if even that cannot be: nothing the data holds stops the others.
    """
    try:
        _dumps(item)
        return item
    except Exception:  # noqa: BLE001 - whatever the data holds, the message is still recorded
        pass
    try:
        run_id, seq, message = item
        plain = {key: value if key == "result" and type(value) is dict else json.loads(json_text(value))
                 for key, value in message["data"].items()}
        packable = run_id, seq, {"type": message["type"], "data": plain}
        _dumps(packable)
        return packable
    except Exception:  # noqa: BLE001 - see above
        return None


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _WIRE[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"the history writer reads builtin values, Kept and Foreign only, "
                                         f"not {module}.{name}") from None


def unpack(payload: bytes) -> list[tuple[Any, ...]]:
    items: list[tuple[Any, ...]] = _Unpickler(io.BytesIO(payload)).load()
    return items


# -- the driver's side -------------------------------------------------------------------------------

class Link:
    """The driver's end of one writer: starts it, sends it frames, hears its replies.

    ``on_flushed(token)``, ``on_warning(text)`` and ``on_end()`` are called on
    the thread that reads the replies; ``on_end`` once, when the writer has
    ended (closed, or gone).
    """

    def __init__(self, path: Path, log_head: int, log_tail: int, *, on_flushed: Callable[[int], None],
                 on_warning: Callable[[str], None], on_end: Callable[[], None]) -> None:
        self._args = [str(path), str(log_head), str(log_tail)]
        self._on_flushed = on_flushed
        self._on_warning = on_warning
        self._on_end = on_end
        self._ready = threading.Event()
        self._booted = threading.Event()   # the writer runs: it opens the file next
        self._opened = threading.Event()   # it has opened the file, or said it cannot, or ended
        self._ended = threading.Event()
        self._process: Any = None  # subprocess.Popen, imported only when a writer starts
        self._out: IO[bytes] | None = None
        self.pid: int | None = None  # the writer process's pid (None: a thread of this process)
        self.refused = False  # the writer could not open the file (and said why, a warning)

    def start(self, *, in_thread: bool = False) -> None:
        """Start the writer and wait until it is ready: a process, else (or ``in_thread``) a thread of this one."""
        if in_thread or not (sys.executable and self._start_process()):
            self._start_thread()

    def _start_process(self) -> bool:
        import subprocess  # noqa: PLC0415 - only a driver that records runs needs it, at its first run

        root = str(Path(__file__).resolve().parents[2])
        try:
            process = subprocess.Popen([sys.executable, "-I", "-S", "-c", _BOOT, root, *self._args, str(os.getpid())],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            _log.warning("maze could not start its run history writer process (%s); it writes in a thread of this "
                         "process instead", exc)
            return False
        assert process.stdin is not None and process.stdout is not None
        try:
            os.setpriority(os.PRIO_PROCESS, process.pid, _NICE)
        except OSError:
            pass  # it has ended already (the replies will say so) or the system says no: it runs at our priority
        heard = threading.Event()
        replies = threading.Thread(target=self._hear, args=(process.stdout, heard, False),
                                   name="maze-history-replies", daemon=True)
        replies.start()
        from .history_store import OPEN_WAIT_S  # noqa: PLC0415 - the writer process imports it only to write

        heard.wait(_READY_S)
        if self._booted.is_set():   # a maze writer: opening the file may wait for other processes' locks
            self._opened.wait(OPEN_WAIT_S + _READY_S)
        if self._ready.is_set():
            self._process, self._out, self.pid = process, process.stdin, process.pid
            return True
        # Not a maze writer after all (sys.executable may be a program that embeds Python), stuck, or ended.
        code = None
        if self._ended.is_set():   # its stdout closed: it is ending, and its exit code says more than silence
            try:
                code = process.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
        process.kill()
        process.wait()
        replies.join()
        process.stdin.close()
        self._ready, self._booted, self._opened, self._ended = (threading.Event() for _ in range(4))
        why = f"{sys.executable} did not answer" + ("" if code is None else f"; it ended with exit code {code}")
        _log.warning("maze could not start its run history writer process (%s); it writes in a thread of this "
                     "process instead", why)
        return False

    def _start_thread(self) -> None:
        from_driver, to_writer = os.pipe()
        from_writer, to_driver = os.pipe()
        path, head, tail = self._args
        threading.Thread(target=_serve_closing, args=(from_driver, to_driver, Path(path), int(head), int(tail), None),
                         name="maze-history-writer", daemon=True).start()
        heard = threading.Event()
        threading.Thread(target=self._hear, args=(os.fdopen(from_writer, "rb"), heard, True),
                         name="maze-history-replies", daemon=True).start()
        self._out = os.fdopen(to_writer, "wb")
        heard.wait()
        self._opened.wait()

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has run (the writer may have ended since)."""
        return self._out is not None

    def send(self, frame: bytes) -> None:
        """Hand ``frame`` over; :class:`OSError` (a broken pipe) if the writer has gone."""
        assert self._out is not None
        self._out.write(frame)
        self._out.flush()

    def ended(self, timeout: float) -> bool:
        """Wait, at most ``timeout`` s, for the writer to end; whether it has."""
        if not self._ended.wait(timeout):
            return False
        if self._process is not None:
            self._process.wait()  # reap it: its replies have ended, so it has exited or is exiting
        return True

    def _hear(self, replies: IO[bytes], heard: threading.Event, last: bool) -> None:
        """Read the writer's replies until it ends. ``last``: no other writer is tried if this one never starts."""
        try:
            for line in replies:
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue  # not the writer's: something printed before the writer took its stdout over
                if not isinstance(reply, dict):
                    continue
                if "flushed" in reply:
                    self._on_flushed(reply["flushed"])
                elif "warning" in reply:
                    self._on_warning(reply["warning"])
                elif "refused" in reply:   # it started, and could not open the file: it ends now
                    self.refused = True
                    self._on_warning(reply["refused"])
                    self._ready.set()
                    self._opened.set()
                    heard.set()
                elif "booted" in reply:
                    self._booted.set()
                    heard.set()
                elif "ready" in reply:
                    self._ready.set()
                    self._opened.set()
                    heard.set()
        finally:
            replies.close()
            self._ended.set()
            self._opened.set()
            heard.set()
            if self._ready.is_set() or last:
                self._on_end()


def not_recorded(path: Path, why: str) -> str:
    """The one warning a driver gives when its runs cannot be recorded in ``path``, for the reason ``why``."""
    return (f"maze: the run history {path} cannot be written here: {why}; so this process's runs are not "
            "recorded. They go on. Choose another file with MaClient(history=...) or $MAZE_HISTORY")


# -- the writer's side -------------------------------------------------------------------------------

def main(argv: list[str]) -> None:
    """The writer process: ``path log_head log_tail parent_pid``; frames on stdin, replies on stdout."""
    import signal  # noqa: PLC0415 - the writer's alone: the driver need not import it

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when recording ends
    replies = os.dup(1)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the replies
    path, head, tail, parent = argv
    _serve_closing(0, replies, Path(path), int(head), int(tail), int(parent))


def _serve_closing(frames: int, replies: int, path: Path, log_head: int, log_tail: int, parent: int | None) -> None:
    try:
        serve(frames, replies, path, log_head, log_tail, parent)
    finally:
        os.close(replies)  # the driver's reader sees the end
        if parent is None:
            os.close(frames)


def serve(frames: int, replies: int, path: Path, log_head: int, log_tail: int, parent: int | None) -> None:
    """Write what arrives on ``frames`` into the history at ``path`` until told to close or the driver is gone.

    ``parent`` is the driver's pid when this is a process of its own (checked
    while nothing arrives); ``None`` in a thread of the driver.
    """
    from .history_store import Recording, connect  # noqa: PLC0415 - sqlite3: only where the writing happens

    def reply(**what: Any) -> None:
        try:
            os.write(replies, json.dumps(what).encode() + b"\n")
        except OSError:
            pass  # the driver is gone; what it handed over is still written

    reply(booted=os.getpid())
    try:
        db = connect(path)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the driver says it once and its runs go on
        reply(refused=not_recorded(path, f"it cannot be opened for writing ({type(exc).__name__}: {exc})"))
        return
    recording = Recording(db, path, log_head, log_tail, warn=lambda text: reply(warning=text))
    reply(ready=os.getpid())
    buffer = bytearray()
    arrived: list[bytes] = []  # whole frames, each written as soon as it has come
    try:
        while True:
            if parent is not None and not select.select([frames], [], [], _PARENT_CHECK_S)[0]:
                if os.getppid() != parent:
                    _take_frames(buffer + _drain(frames), arrived)  # the driver is gone; something holds the pipe
                    break
                continue
            chunk = os.read(frames, 1 << 20)
            if not chunk:
                break  # end of file: the driver closed the pipe or is gone
            buffer += chunk
            _take_frames(buffer, arrived)
            if _write(recording, arrived, reply):
                return
            arrived.clear()
        _write(recording, arrived, reply)
        recording.finish()
    finally:
        recording.db.close()


def _drain(fd: int) -> bytes:
    """What can be read from ``fd`` without waiting."""
    out = bytearray()
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _take_frames(buffer: bytearray, arrived: list[bytes]) -> None:
    """Move the whole frames at the start of ``buffer`` to ``arrived``."""
    at = 0
    while len(buffer) - at >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buffer, at)
        start = at + _HEADER.size
        if len(buffer) - start < size:
            break
        arrived.append(bytes(buffer[start:start + size]))
        at = start + size
    del buffer[:at]


def _write(recording: Recording, frames: list[bytes], reply: Callable[..., None]) -> bool:
    """Commit the items of ``frames`` as one transaction, answer their flush tokens; whether they close the writer."""
    items: list[tuple[Any, ...]] = []
    for frame in frames:
        try:
            items += unpack(frame)
        except Exception as exc:  # noqa: BLE001 - never from maze's own driver; the writer goes on all the same
            recording.warn_once(exc)
    if not items:
        return False
    recording.write(items)
    for item in items:
        if len(item) == 2 and item[0] == "flush":
            reply(flushed=item[1][0])
    return any(len(item) == 2 and item[0] == "close" for item in items)
