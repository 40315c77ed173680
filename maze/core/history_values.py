"""Values in the run history: message data as JSON, result values as descriptors and pickles.

What :mod:`maze.core.history` stores of a message and how it reads it back (its
docstring, "Safe to open", says why): :func:`json_text` turns any data into
JSON, :func:`encode` also picks out the ``finish_task`` result values kept as
pickles, :func:`check_private` refuses a file others could have written before
a pickle is loaded from it, and :func:`load_value` gives a kept value back.

Handing values to the writer process. The driver pickles messages for the
writer process (see :mod:`maze.core.history_process`), which must not import
the user's code to read them: so only builtin values cross as themselves. The
driver replaces each ``finish_task`` result value that is not exactly JSON by
a :class:`Kept` (:func:`with_kept_results`: its descriptor and pickle, made as
the history stores them), and any other object by a :class:`Foreign`
(:func:`foreign`: what JSON makes of it, and its text as a dict key). The
writer's :func:`encode` takes both for what they stand for, so a message is
stored exactly as if it had been encoded in the driver.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

from .errors import UnsafeHistoryError
from .messages import short_repr

#: Result values whose pickle (buffers counted), or whose JSON, is larger than this are only described.
VALUE_LIMIT = 1 << 20


class Dropped(str):
    """Stands, in the history, for a result value that was not kept (it reads as a short description)."""

    __slots__ = ()


class Stored(str):
    """Stands for a result value kept in the history but not loaded (``messages(values=False)``)."""

    __slots__ = ()



class Kept:
    """A ``finish_task`` result value, as the driver hands it to the writer: its descriptor and pickle.

    ``blob`` is ``None`` for a value only described (:class:`Dropped`).
    """

    __slots__ = ("descriptor", "blob")

    def __init__(self, descriptor: str, blob: bytes | None) -> None:
        self.descriptor = str(descriptor)
        self.blob = blob

    def __reduce__(self) -> tuple[Any, ...]:
        return Kept, (self.descriptor, self.blob)


class Foreign:
    """Any other object that is not a builtin value, as the driver hands it to the writer.

    ``plain`` is the value JSON makes of it (built of builtins only), ``key``
    its text as a dict key (``None`` for an unhashable object, never a key).
    """

    __slots__ = ("plain", "key")

    def __init__(self, plain: Any, key: str | None) -> None:
        self.plain = plain
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return Foreign, (self.plain, self.key)


def _default(value: Any) -> Any:
    """What JSON cannot hold: a :class:`Foreign`'s JSON value, else the short repr text."""
    if type(value) is Foreign:
        return value.plain
    return short_repr(value)


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_default)
_SCALARS = frozenset({str, int, float, bool, type(None)})


def json_text(value: Any, depth: int = 0) -> str:
    """JSON text of ``value``; what JSON cannot hold becomes its short repr text."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        # keys JSON cannot hold, a reference cycle, deep nesting: only the part that has it becomes text
        if type(value) is dict and depth < 4:
            items = (f"{_ENCODER.encode(_key(k))}:{json_text(v, depth + 1)}" for k, v in value.items())
            return "{" + ",".join(items) + "}"
        return _ENCODER.encode(short_repr(value))


def _key(key: Any) -> str:
    """A dict key as JSON text holds it: its ``str``, else (``__str__`` raised) its short repr."""
    if type(key) is Foreign and key.key is not None:
        return key.key
    try:
        return str(key)
    except Exception:  # noqa: BLE001 - whatever a user's __str__ raises, the message is still recorded
        return short_repr(key)


def _is_json(value: Any) -> bool:
    """Whether ``value`` is exactly JSON (exact types: a tuple or a str subclass is not)."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is list:
        return all(map(_is_json, value))
    if kind is dict:
        return all(type(k) is str and _is_json(v) for k, v in value.items())
    return False


def _pickled(value: Any) -> tuple[str, bytes | None]:
    """A result value that is not JSON: its descriptor, and its pickle (``None`` when not kept)."""
    if type(value) is Kept:  # made by the driver, which has the value itself
        return (Dropped if value.blob is None else Stored)(value.descriptor), value.blob
    name = type(value).__name__
    if _too_long(value):   # no need to pickle it to know
        size = len(value.encode("utf-8", "surrogatepass")) if type(value) is str else len(value)
        return _too_large(name, size), None
    buffers: list[pickle.PickleBuffer] = []
    try:
        # protocol 5 hands big buffers (arrays) out of band: sized without copying them
        blob = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:  # noqa: BLE001 - a lock, a generator...
        return Dropped(f"<{name}, not kept in the history: {short_repr(exc)}>"), None
    size = len(blob) + sum(memoryview(b).nbytes for b in buffers)
    if size > VALUE_LIMIT:
        return _too_large(name, size), None
    if buffers:
        blob = pickle.dumps(value, protocol=5)  # in band this time: small enough to copy
    return Stored(f"<{name}, stored in the history>"), blob


def _too_long(value: Any) -> bool:
    """A string or bytes value too large to keep, known by its length alone (its JSON or pickle is longer)."""
    return type(value) in (str, bytes, bytearray) and len(value) > VALUE_LIMIT


def _too_large(name: str, size: int) -> Dropped:
    return Dropped(f"<{name} of {size / 2**20:.1f} MB, not kept in the history>")


def plain_result(data: dict[str, Any]) -> bool:
    """Whether a ``finish_task``'s ``data`` has no result value to keep as a pickle (:func:`with_kept_results`)."""
    result = data.get("result")
    if type(result) is not dict:
        return True
    for value in result.values():
        if (type(value) not in _SCALARS and not _plain(value)) or _too_long(value):
            return False
    return True


def with_kept_results(data: dict[str, Any]) -> dict[str, Any]:
    """A ``finish_task``'s ``data`` with each result value that is not exactly JSON replaced by its :class:`Kept`.

    ``data`` is left as it is (it is the live run's message); a copy is made only when a value is replaced.
    """
    result = data.get("result")
    if type(result) is not dict:
        return data
    # Values pickled here, in the driver; and long strings, dropped here rather than sent whole to the writer.
    odd = [key for key, value in result.items()
           if (type(value) not in _SCALARS and not _plain(value)) or _too_long(value)]
    if not odd:
        return data
    result = dict(result)
    for key in odd:
        result[key] = Kept(*_pickled(result[key]))
    return {**data, "result": result}


def foreign(value: Any) -> Foreign:
    """The :class:`Foreign` that stands for ``value`` (an object that is not a builtin value) in the writer."""
    plain = json.loads(json_text(value))
    try:
        hash(value)
    except Exception:  # noqa: BLE001 - unhashable (or a broken __hash__): never a dict key
        return Foreign(plain, None)
    try:  # the key JSON itself would write (an int subclass gives its number), else _key's text
        key: str = json.loads(_ENCODER.encode({value: 0})).popitem()[0]
    except (TypeError, ValueError, RecursionError):
        key = _key(value)
    return Foreign(plain, key)


def encode(kind: str, data: dict[str, Any]) -> tuple[str, list[tuple[str, bytes | None]]]:
    """A message's data as JSON, and the ``(key, pickle or None)`` of the result values it describes."""
    described: list[tuple[str, bytes | None]] = []
    if kind == "finish_task" and type(data.get("result")) is dict:
        result = data["result"]
        odd = [k for k, v in result.items() if not _plain(v)]
        if odd:
            result = dict(result)
            for key in odd:
                result[key], blob = _pickled(result[key])
                described.append((key, blob))
            data = {**data, "result": result}
    text = json_text(data)
    if len(text) > VALUE_LIMIT:  # rare: some field is huge; describe each field (result value) that is
        data = _shrunk(kind, data, described)
        text = json_text(data)
    return text, described


def _plain(value: Any) -> bool:
    try:
        return _is_json(value)
    except RecursionError:
        return False  # nested too deep to check: it goes through pickle, which has its own limit


def _shrunk(kind: str, data: dict[str, Any], described: list[tuple[str, bytes | None]]) -> dict[str, Any]:
    """``data`` with each field (each result value) whose JSON is over :data:`VALUE_LIMIT` described instead."""
    out = dict(data)
    for field, value in data.items():
        if kind == "finish_task" and field == "result" and type(value) is dict:
            result = out["result"] = dict(value)
            for key, v in value.items():
                if len(text := json_text(v)) > VALUE_LIMIT:
                    result[key] = _too_large(type(v).__name__, len(text))
                    described.append((key, None))
        elif len(text := json_text(value)) > VALUE_LIMIT:
            out[field] = _too_large(type(value).__name__, len(text))
    return out


def check_private(path: Path) -> None:
    """Raise :class:`UnsafeHistoryError` unless only this user can have written the database."""
    if not hasattr(os, "getuid"):  # Windows: no owner and mode bits to check
        return
    for file in (path, path.with_name(path.name + "-wal")):
        try:
            st = file.stat()
        except FileNotFoundError:
            continue  # no -wal: everything is in the database file
        if st.st_uid != os.getuid():
            problem, fix = f"owned by another user (uid {st.st_uid})", f"chown {os.getuid()} {file}; chmod 600 {file}"
        elif st.st_mode & 0o022:
            problem, fix = "writable by group or others", f"chmod 600 {file}"
        else:
            continue
        raise UnsafeHistoryError(
            f"the run history {file} is {problem}, so maze will not load the result values stored in it: loading "
            f"one runs code, which whoever can write the file chooses. If you trust its contents: {fix}"
        )


def load_value(descriptor: str, kept: bool, blob: bytes | None) -> Any:
    if not kept:
        return Dropped(descriptor)
    if blob is None:
        return Stored(descriptor)
    try:
        return pickle.loads(blob)
    except Exception as exc:  # noqa: BLE001 - e.g. a class that no longer exists
        return Dropped(f"{descriptor[:-1]}, but unreadable: {short_repr(exc)}>")
