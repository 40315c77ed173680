"""The frames the backends exchange with their workers: named, and unchanged by the trip."""

from __future__ import annotations

import pickle
import threading
import time
from concurrent.futures import Future

import pytest

from maze.backends import _packing
from maze.backends._jobs import Job, sweep
from maze.backends._worker import CallHeader, Done, Drop, Dropped, Fed, Go, Log, Ready, Started, decode, encode
from maze.core.protocol import Failure, TaskError, TaskLog

ERROR = TaskError.simple("ValueError", "bad input")
DESCRIPTOR = _packing.pack({"x": 1}, "test").descriptor()

LOCAL_FRAMES = [
    (CallHeader("c1", "t1", "key", True, ["a"], ["b"], [DESCRIPTOR, DESCRIPTOR], ("out",), False, True),
     ("call_id", "task_id", "code_key", "ship", "constant_names", "input_names", "descriptors", "outputs",
      "announce", "ahead", "chain")),
    (CallHeader("c2", "t2", "key", False, ["a"], ["b"], [DESCRIPTOR, None], ("out",), False, True, ("c1", [(1, "out")])),
     ("call_id", "task_id", "code_key", "ship", "constant_names", "input_names", "descriptors", "outputs",
      "announce", "ahead", "chain")),
    (Drop("c1"), ("call_id",)),
    (Fed("c1"), ("call_id",)),
    (Go(), ()),
    (Dropped("c1", True), ("call_id", "ran")),
    (Ready(123, "host"), ("pid", "host")),
    (Started("c1", 1.5), ("call_id", "at")),
    (Log("c1", "stdout", "hello\n", 2.5), ("call_id", "stream", "text", "at")),
    (Done("c1", ["out"], None, 1.5, 2.5, [DESCRIPTOR], ["old"]),
     ("call_id", "keys", "error", "started", "finished", "descriptors", "dropped")),
    (Done("c1", [], ERROR, 1.5, 2.5, [], []),
     ("call_id", "keys", "error", "started", "finished", "descriptors", "dropped")),
]


@pytest.mark.parametrize(("frame", "fields"), LOCAL_FRAMES, ids=lambda f: type(f).__name__)
def test_local_frames_round_trip(frame, fields):
    assert type(frame)._fields == fields
    back = decode(encode(frame))
    assert type(back) is type(frame)
    assert back == frame
    assert pickle.loads(pickle.dumps(frame)) == frame  # plain pickle works too


def test_local_frames_travel_as_plain_tuples():
    # No class reference in the bytes: the frame's kind is a number.
    data = encode(Started("c1", 1.5))
    assert b"Started" not in data
    assert type(pickle.loads(data)) is tuple


def test_error_frame_keeps_its_kind():
    error = TaskError.timed_out("t1", 3)
    back = decode(encode(Done("c1", [], error, 1.0, 2.0, [], [])))
    assert isinstance(back, Done) and back.error == error and back.error.kind is Failure.TIMED_OUT


@pytest.mark.parametrize("value", [b"x" * (2 << 20), "é" * (1 << 20), list(range(400_000))],
                         ids=["bytes", "str", "list"])
def test_a_large_value_pickled_in_band_goes_to_shared_memory_and_its_header_stays_small(value):
    packed = _packing.pack(value, "test-frames")
    packed.own_file()
    data, path, sizes, frames = packed.descriptor()
    assert path is not None and frames == 0
    assert len(pickle.dumps(packed.descriptor())) < 200   # what every call taking it carries
    assert sum(sizes) == packed.nbytes > _packing.SHARED_THRESHOLD
    assert _packing.unpack(packed) == value


def test_a_value_in_shared_memory_may_end_with_an_empty_buffer():
    import numpy as np
    packed = _packing.pack([np.ones(131073), np.zeros(0)], "test-frames")   # the empty one past an unaligned end
    packed.own_file()
    assert packed.path is not None
    ones, empty = _packing.unpack(packed)
    assert (ones == 1).all() and ones.size == 131073 and empty.size == 0


def test_an_array_in_shared_memory_keeps_its_short_pickle_in_the_header():
    import numpy as np
    array = np.arange(300_000.0)
    packed = _packing.pack({"a": array, "b": 1}, "test-frames")
    packed.own_file()
    data, path, sizes, frames = packed.descriptor()
    assert data and path is not None and sizes == (array.nbytes,)
    back = _packing.unpack(packed)
    assert back["b"] == 1 and (back["a"] == array).all()


@pytest.mark.parametrize("odd", range(1001, 1009))   # a first buffer of every length modulo 8
def test_arrays_mapped_from_shared_memory_are_aligned_and_writable_whatever_comes_before_them(odd):
    import numpy as np
    value = {"odd": np.ones(odd, dtype=np.uint8), "floats": np.arange(200_000.0), "text": "x" * 4097}
    packed = _packing.pack(value, "test-frames")   # a pickle of over 4 KB, in the file with the arrays
    packed.own_file()
    assert packed.path is not None and not packed.data
    back = _packing.unpack(packed)
    assert back["text"] == value["text"] and (back["floats"] == value["floats"]).all()
    for array in (back["odd"], back["floats"]):
        assert array.flags.aligned and array.flags.writeable


def test_ray_frames_round_trip():
    import maze.backends._ray_task as ray_task  # Ray is a test dependency; importing starts nothing
    note = ray_task.StartNote("c1", "127.0.0.1", "node", "worker", (0,), 1.5, 4242)
    frames = [
        (ray_task.RayCall("session", "key", "c1", "t1", {"a": 1}, ["b"], ("out",), False),
         ("session", "code_key", "call_id", "task_id", "constants", "input_keys", "outputs", "gpus")),
        (note, ("call_id", "host", "node", "worker", "gpu_ids", "at", "group")),
        (ray_task.Report(note, True, ["out"], {"out": 1}, None, [TaskLog("c1", "stdout", "hi", 2.0)], 3, 2.5),
         ("start", "ok", "keys", "inline", "error", "logs", "logs_from", "finished")),
        (ray_task.Printed("c1", 0, [["stdout", "hi", 2.0]]), ("call_id", "first", "lines")),
    ]
    for frame, fields in frames:
        assert type(frame)._fields == fields
        assert pickle.loads(pickle.dumps(frame)) == frame
    report = frames[2][0]
    assert ray_task.Report.of_wire(report.wire()) == report     # a report travels as plain lists
    failed = report._replace(ok=False, keys=[], inline={}, error=TaskError.simple("ValueError", "no"))
    assert ray_task.Report.of_wire(failed.wire()) == failed


def test_a_ray_output_rides_in_the_report_only_when_it_is_small_buffers_included():
    import numpy as np

    import maze.backends._ray_task as ray_task
    limit = ray_task.INLINE_LIMIT
    assert ray_task.small(np.ones(16))
    # A large array pickles to a few hundred bytes with its buffer out of band: the buffer counts.
    assert not ray_task.small(np.ones(limit // 8 + 1))
    assert not ray_task.small(np.ones((limit, 2))[:, 0])   # not contiguous: pickled in band
    assert not ray_task.small(b"x" * limit)
    assert not ray_task.small(list(range(limit)))
    assert ray_task.small(7) and ray_task.small("short") and ray_task.small(bytearray(100))
    assert not ray_task.small("é" * (limit // 2 + 10))   # fewer characters than the limit, 2 bytes each in UTF-8
    assert ray_task.small("x" * (limit // 2))
    with pytest.raises(TypeError, match="pickle"):
        ray_task.small(threading.Lock())


def _within(seconds: float, check) -> bool:
    """Whether ``check()`` holds within ``seconds`` (looked at every 5 ms)."""
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.005)
    return check()


def _hub(record):
    """A stand-in for a Ray client's hub actor: ``hub.noted.remote(notes)`` gives ``record(notes)``."""

    class Hub:
        class noted:   # noqa: N801 - an actor method's shape: hub.noted.remote(notes)
            @staticmethod
            def remote(notes):
                return record(notes)

    return Hub


def test_a_ray_worker_sends_start_notes_only_for_calls_that_have_run_a_while():
    import maze.backends._ray_task as ray_task
    sent: list[str] = []
    Hub = _hub(lambda notes: sent.extend(n.call_id for n in notes))

    def note(call_id: str, at: float):
        return ray_task.StartNote(call_id, "127.0.0.1", "node", "worker", (), at, None)

    now = [0.0]   # the notes' clock, moved by hand
    ray_task._sessions["notes-test"] = (Hub, [])
    try:
        notes = ray_task._Notes(clock=lambda: now[0])
        notes.started("notes-test", note("short", 0.0), [])
        notes.started("notes-test", note("long", 0.0), [])
        time.sleep(10 * ray_task._NOTE_DELAY_S)   # the sender looks several times; no call has run the delay
        assert sent == []
        notes.ended("short")   # over before its note was due: it sends none
        now[0] = 1.0
        assert _within(5, lambda: "long" in sent)
        notes.started("notes-test", note("late", 1.0), [])   # a call that starts while others ran long
        time.sleep(10 * ray_task._NOTE_DELAY_S)
        assert sent == ["long"], "only notes that are due go"
        now[0] = 2.0
        assert _within(5, lambda: "late" in sent)
        assert _within(5, lambda: not notes._wake.is_set())   # nothing left: the sender sleeps
        assert sent == ["long", "late"]
    finally:
        del ray_task._sessions["notes-test"]


def test_a_ray_worker_sends_the_lines_of_a_running_call_once_and_its_report_carries_the_rest():
    import maze.backends._ray_task as ray_task
    batches: list[list] = []

    def record(notes):
        batches.append(list(notes))
        return len(batches)   # stands for the hub call's object reference

    Hub = _hub(record)

    now = [0.0]
    waited: list[int] = []
    ray_task._sessions["lines-test"] = (Hub, [])
    try:
        notes = ray_task._Notes(clock=lambda: now[0], wait=waited.append)
        logs: list[TaskLog] = []

        def say(text: str) -> None:
            logs.append(TaskLog("c", "stdout", text, 0.0))
            notes.printed()

        start = ray_task.StartNote("c", "127.0.0.1", "node", "worker", (), 0.0, None)
        notes.started("lines-test", start, logs)
        say("a\n")
        time.sleep(10 * ray_task._NOTE_DELAY_S)
        assert batches == []   # a call says nothing for its first moments
        now[0] = 1.0
        assert _within(5, lambda: len(batches) == 1)
        assert batches[0] == [start, ray_task.Printed("c", 0, [["stdout", "a\n", 0.0]])]
        say("b\n")
        say("c\n")
        time.sleep(10 * ray_task._NOTE_DELAY_S)
        assert len(batches) == 1   # new lines wait until _LINES_S has passed since the last went
        now[0] = 1.0 + ray_task._LINES_S
        assert _within(5, lambda: len(batches) == 2)
        assert batches[1] == [ray_task.Printed("c", 1, [["stdout", "b\n", 0.0], ["stdout", "c\n", 0.0]])]
        say("d\n")
        assert notes.ended("c") == 3   # the hub holds three lines: the report carries the fourth
        assert waited == [2]           # after waiting for the hub call that took the last of them
        assert _within(5, lambda: not notes._wake.is_set())   # nothing left: the sender sleeps
        assert len(batches) == 2

        quick: list[TaskLog] = []
        notes.started("lines-test", start._replace(call_id="quick"), quick)
        quick.append(TaskLog("quick", "stdout", "x\n", 0.0))
        notes.printed()
        assert notes.ended("quick") == 0 and waited == [2]   # over at once: its report carries all, no wait
    finally:
        del ray_task._sessions["lines-test"]


def test_the_driver_reports_each_ray_line_once_and_says_when_some_were_lost():
    from calls import call_taking_x

    from maze.backends.ray import RayBackend, _Job  # Ray is a test dependency; importing starts nothing
    reported: list = []
    job = _Job(call=call_taking_x(print, "t", 1, ()), report=reported.append, future=Future(), refs=[],
               started=True)

    def lines(*texts: str) -> list[TaskLog]:
        return [TaskLog("run:t:1", "stdout", text, 0.0) for text in texts]

    printed = RayBackend._printed   # it needs no backend, only the job
    printed(None, job, 0, lines("a", "b"))   # type: ignore[arg-type]
    printed(None, job, 1, lines("b", "c"))   # type: ignore[arg-type] - "b" again: reported once
    printed(None, job, 5, lines("f"))        # type: ignore[arg-type] - "d" and "e" never came
    printed(None, job, 0, lines("a"))        # type: ignore[arg-type] - all reported already
    texts = [log.text for log in reported]
    assert texts[:3] == ["a", "b", "c"] and texts[4:] == ["f"] and job.lines == 6
    assert reported[3].stream == "stderr" and "2 lines of this task's output were lost" in texts[3]


def test_a_long_bytes_or_str_output_is_measured_by_its_length_not_pickled(monkeypatch):
    import maze.backends._ray_task as ray_task

    def no_pickling(*args, **kwargs):
        raise AssertionError("pickled just to be measured")

    monkeypatch.setattr(ray_task.cloudpickle, "dumps", no_pickling)
    limit = ray_task.INLINE_LIMIT
    for value in (b"x" * (20 * limit), bytearray(20 * limit), "x" * (20 * limit)):
        assert not ray_task.small(value)
    assert ray_task.small(b"x" * (limit // 2))


def test_sweep_takes_late_jobs_once():
    def job(timeout: float | None) -> Job:
        call = type("Call", (), {"timeout": timeout, "task_id": "t"})()
        return Job(call, lambda event: None, Future())  # type: ignore[arg-type]

    now = time.monotonic()
    late, soon, untimed = job(1), job(10), job(None)
    for j in (late, soon, untimed):
        j.start_clock(now)
    assert untimed.deadline is None
    taken, earliest = sweep([late, soon, untimed], now + 5)
    assert taken == [late] and earliest == soon.deadline
    assert late.deadline is None and late.timed_out().kind is Failure.TIMED_OUT
    assert sweep([late, soon, untimed], now + 5) == ([], soon.deadline)


# -- frames read and written in bulk (maze.backends._wire) ---------------------------------


@pytest.fixture
def pair():
    """Two connected ends, closed after the test (closing one twice is harmless)."""
    import socket
    from multiprocessing.connection import Connection

    ours, theirs = socket.socketpair()
    a, b = Connection(ours.detach()), Connection(theirs.detach())
    yield a, b
    a.close()
    b.close()


def test_frames_written_together_arrive_in_one_read_and_in_order(pair):
    from maze.backends._wire import FrameReader, FrameWriter

    a, b = pair
    writer, reader = FrameWriter(a.fileno()), FrameReader(b.fileno())
    sent = [b"one", b"", memoryview(b"three"), b"x" * 200_000]   # an empty frame, a view, one over a read
    for frame in sent:
        writer.put(frame)
    assert writer.queued and not reader.pending()     # nothing goes before flush()
    writer.flush()
    assert not writer.queued and reader.pending()
    reader.fill()
    assert reader.has_frame()
    got = [reader.recv_bytes() for _ in sent]            # the long one is read on until whole
    assert got == [bytes(f) for f in sent]
    assert not reader.has_frame() and not reader.pending()


def test_bulk_frames_speak_the_connection_framing_both_ways(pair):
    from maze.backends._wire import FrameReader, FrameWriter

    a, b = pair
    a.send_bytes(b"from a connection")
    a.send_bytes(b"y" * 70_000)
    reader = FrameReader(b.fileno())
    assert reader.recv_bytes() == b"from a connection"
    assert reader.recv_bytes() == b"y" * 70_000
    writer = FrameWriter(b.fileno())
    writer.put(b"to a connection")
    writer.put(b"")
    writer.flush()
    assert a.recv_bytes() == b"to a connection" and a.recv_bytes() == b""


def test_a_frame_cut_short_by_the_other_end_closing_is_an_eof(pair):
    import os
    import struct

    from maze.backends._wire import FrameReader

    a, b = pair
    reader = FrameReader(b.fileno())
    a.send_bytes(b"whole")
    os.write(a.fileno(), struct.pack("!i", 10) + b"half")   # a frame of 10 bytes, 4 sent
    a.close()
    reader.fill()
    assert reader.recv_bytes() == b"whole"
    assert not reader.has_frame() and reader.pending()
    assert reader.readable()                             # the end of file: a read would not wait
    with pytest.raises(EOFError):
        reader.recv_bytes()


def test_a_writer_that_never_waits_keeps_what_the_socket_did_not_take_and_sends_it_first():
    import socket

    from maze.backends._wire import FrameReader, FrameWriter

    ours, theirs = socket.socketpair()
    try:
        writer = FrameWriter(ours.fileno(), lambda view: ours.send(view, socket.MSG_DONTWAIT))
        big = bytes(range(256)) * 20_000                    # 5 MB: more than the socket holds
        writer.put(big)
        assert writer.flush() is False and writer.queued    # sent part, kept the rest, did not wait
        writer.put(b"after")                                 # put meanwhile: goes after the rest
        reader = FrameReader(theirs.fileno())
        got: list[bytes] = []
        drain = threading.Thread(target=lambda: got.extend(reader.recv_bytes() for _ in range(2)))
        drain.start()
        while not writer.flush():
            time.sleep(0.001)
        drain.join(10)
        assert got == [big, b"after"] and not writer.queued
    finally:
        ours.close()
        theirs.close()


def test_a_reader_polls_a_descriptor_numbered_past_fd_setsize():
    import os
    import resource
    import socket

    from maze.backends._wire import FrameReader

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= 1500:   # room for descriptor 1500 (within the hard limit, which no test may exceed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    ours, theirs = socket.socketpair()
    high = os.dup2(theirs.fileno(), 1500)   # a driver with many files open hands such numbers to its workers
    try:
        reader = FrameReader(high)
        assert not reader.pending()
        ours.sendall(b"\x00\x00\x00\x02hi")
        assert reader.pending() and reader.recv_bytes() == b"hi"
    finally:
        os.close(high)
        ours.close()
        theirs.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_part_of_a_frame_is_pending_but_not_readable_when_nothing_more_has_arrived(pair):
    import os
    import struct

    from maze.backends._wire import FrameReader

    a, b = pair
    reader = FrameReader(b.fileno())
    os.write(a.fileno(), struct.pack("!i", 10) + b"half")   # a writer stopped halfway through a frame
    reader.fill()
    assert reader.pending() and not reader.has_frame()
    assert not reader.readable()                         # a look that must not wait reads no more


def test_a_reader_tells_whether_the_next_frames_have_all_arrived(pair):
    import os
    import struct

    from maze.backends._wire import FrameReader

    a, b = pair
    reader = FrameReader(b.fileno())
    long_header = struct.pack("!i", -1) + struct.pack("!Q", 3)   # the form of a frame over 2 GiB, here of 3 bytes
    parts = [struct.pack("!i", 4) + b"done", struct.pack("!i", 2) + b"o1", long_header + b"o2!"]
    os.write(a.fileno(), b"".join(parts)[:-2])                  # the last frame cut short
    reader.fill()
    assert reader.has_frames(0) and reader.has_frames(1) and reader.has_frames(2)
    assert not reader.has_frames(3)
    os.write(a.fileno(), b"".join(parts)[-2:])
    reader.fill()
    assert reader.has_frames(3) and not reader.has_frames(4)
    assert [reader.recv_bytes() for _ in parts] == [b"done", b"o1", b"o2!"]
    os.write(a.fileno(), long_header[:6])                        # a long header cut short
    reader.fill()
    assert not reader.has_frames(1) and not reader.has_frame()
