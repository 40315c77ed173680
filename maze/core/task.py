"""The ``@task`` decorator.

A task is a plain function of one argument, a dict of its declared inputs,
returning a dict of its declared outputs. ``@task`` checks the declaration once,
at decoration time, and wraps the function in a :class:`TaskFunction` that is
still an ordinary callable (``add({"a": 1, "b": 2})`` works), so tasks can be
tested on their own. The frozen :class:`TaskSpec` it carries is what workflows
and backends read.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, overload

from .errors import TaskDefinitionError
from .resources import Resources

TaskBody = Callable[[dict[str, Any]], dict[str, Any]]

#: Options a task accepts besides inputs, outputs and resources.
OPTION_NAMES = ("retries", "retry_delay", "timeout", "cache")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How failures of a task are handled."""

    retries: int = 0                # extra attempts after a failure
    retry_delay: float = 0.0        # seconds before each retry
    timeout: float | None = None    # seconds an attempt may run; None for no limit
    cache: bool = False             # reuse results across runs for the same code and inputs

    @classmethod
    def parse(cls, options: Mapping[str, Any], *, owner: str, base: TaskOptions | None = None) -> TaskOptions:
        base = base or cls()
        unknown = [k for k in options if k not in OPTION_NAMES]
        if unknown:
            raise TaskDefinitionError(
                f"{owner}: unknown option {unknown[0]!r}; accepted options are {', '.join(OPTION_NAMES)}"
            )
        merged = {name: getattr(base, name) for name in OPTION_NAMES} | dict(options)
        retries, delay, timeout = merged["retries"], merged["retry_delay"], merged["timeout"]
        if not isinstance(merged["cache"], bool):
            raise TaskDefinitionError(f"{owner}: cache={merged['cache']!r} is not accepted; expected True or False")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise TaskDefinitionError(f"{owner}: retries={retries!r} is not accepted; expected a whole number, 0 or more")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not delay >= 0 or math.isinf(delay):
            raise TaskDefinitionError(f"{owner}: retry_delay={delay!r} is not accepted; expected seconds, 0 or more")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            raise TaskDefinitionError(
                f"{owner}: timeout={timeout!r} is not accepted; expected seconds greater than 0, or None"
            )
        return cls(retries=retries, retry_delay=float(delay), timeout=None if timeout is None else float(timeout),
                   cache=merged["cache"])


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Everything ``@task`` declared about a function."""

    func: TaskBody
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    resources: Resources
    options: TaskOptions

    def with_overrides(self, resources: Mapping[str, Any] | None, options: Mapping[str, Any], *, owner: str) -> TaskSpec:
        """This spec with per-``add_task`` resources and options laid over the decorator's."""
        if resources is None and not options:
            return self
        return replace(
            self,
            resources=Resources.parse(resources, owner=owner, base=self.resources),
            options=TaskOptions.parse(options, owner=owner, base=self.options),
        )


class TaskFunction:
    """A function decorated with ``@task``: still callable, plus a :attr:`spec`."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        functools.update_wrapper(self, spec.func)

    def __call__(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.spec.func(params)

    def __reduce__(self) -> str | tuple[Any, ...]:
        # A task defined at the top of an importable module travels by name, so the
        # worker imports the module and tracebacks show real file names and lines.
        # Anything else (notebook, __main__, closures) travels by value.
        module = getattr(self.spec.func, "__module__", None)
        qualname = getattr(self.spec.func, "__qualname__", "")
        if module and module != "__main__" and "<locals>" not in qualname:
            found: Any = sys.modules.get(module)
            for part in qualname.split("."):
                found = getattr(found, part, None)
            if found is self:
                return (_import_task, (module, qualname))
        return (TaskFunction, (self.spec,))

    def __repr__(self) -> str:
        s = self.spec
        return f"<maze task {s.name}: inputs={list(s.inputs)} outputs={list(s.outputs)}>"


def _import_task(module: str, qualname: str) -> TaskFunction:
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    if not isinstance(found, TaskFunction):
        raise TypeError(f"{module}.{qualname} is no longer a @task function")
    return found


def _name_of(body: Callable[..., Any]) -> str:
    """A task's default name: the function's, also through ``functools.partial``."""
    while isinstance(body, functools.partial):
        body = body.func
    return getattr(body, "__name__", None) or type(body).__name__


def _check_callable_with_params(body: Callable[..., Any], owner: str) -> None:
    """Refuse now a function that could never be called with the one ``params`` dict."""
    try:
        signature = inspect.signature(body)
    except (TypeError, ValueError):
        return  # no signature to read (some builtins): it will tell at run time
    try:
        signature.bind({})
    except TypeError as exc:
        raise TaskDefinitionError(
            f"{owner}: {getattr(body, '__name__', body)}{signature} cannot be called with one "
            f"argument, the params dict ({exc}); define it as def {getattr(body, '__name__', 'f')}(params): ..."
        ) from None


def _names(owner: str, kind: str, names: Iterable[str] | None) -> tuple[str, ...]:
    if names is None:
        return ()
    if isinstance(names, str):
        raise TaskDefinitionError(f"{owner}: {kind}s must be a list of names, not the string {names!r}")
    result = tuple(names)
    for name in result:
        if not isinstance(name, str) or not name.isidentifier():
            raise TaskDefinitionError(
                f"{owner}: {kind} name {name!r} is not accepted; expected an identifier-like string"
            )
    seen: set[str] = set()
    for name in result:
        if name in seen:
            raise TaskDefinitionError(f"{owner}: {kind} name {name!r} is declared twice")
        seen.add(name)
    return result


@overload
def task(func: TaskBody, /) -> TaskFunction: ...
@overload
def task(
    *,
    inputs: Iterable[str] | None = None,
    outputs: Iterable[str] | None = None,
    resources: Mapping[str, Any] | None = None,
    retries: int = 0,
    retry_delay: float = 0.0,
    timeout: float | None = None,
    cache: bool = False,
) -> Callable[[TaskBody], TaskFunction]: ...


def task(
    func: TaskBody | None = None,
    /,
    *,
    inputs: Iterable[str] | None = None,
    outputs: Iterable[str] | None = None,
    resources: Mapping[str, Any] | None = None,
    retries: int = 0,
    retry_delay: float = 0.0,
    timeout: float | None = None,
    cache: bool = False,
) -> TaskFunction | Callable[[TaskBody], TaskFunction]:
    """Declare a function as a maze task.

    Args:
        inputs: names of the keys the task reads from its ``params`` dict.
        outputs: names of the keys the returned dict must hold.
        resources: ``{"cpu", "cpu_mem", "gpu", "gpu_mem"}``; missing keys
            default to 1 cpu and nothing else.
        retries: extra attempts after a failed one.
        retry_delay: seconds to wait before each retry.
        timeout: seconds an attempt may run before it is stopped.
        cache: reuse the result of an earlier run (of any workflow, any
            session) with the same code and inputs, instead of running again.

    Raises:
        TaskDefinitionError: (a ``ValueError``) for a bad name, resource or option.
        TypeError: when applied to something that is not a function.
    """

    def decorate(body: TaskBody) -> TaskFunction:
        if isinstance(body, TaskFunction):
            raise TypeError(f"@task was applied twice to {body.spec.name!r}; apply it once")
        if not callable(body):
            raise TypeError(f"@task expects a function, got {type(body).__name__} {body!r}")
        name = _name_of(body)
        owner = f"@task {name!r}"
        _check_callable_with_params(body, owner)
        spec = TaskSpec(
            func=body,
            name=name,
            inputs=_names(owner, "input", inputs),
            outputs=_names(owner, "output", outputs),
            resources=Resources.parse(resources, owner=owner),
            options=TaskOptions.parse(
                {"retries": retries, "retry_delay": retry_delay, "timeout": timeout, "cache": cache}, owner=owner
            ),
        )
        return TaskFunction(spec)

    if func is not None:
        return decorate(func)
    return decorate
