"""The backend-neutral heart of maze.

Owns tasks, workflows, plans, runs, messages and scheduling. Depends on the
standard library only (plus ``nvidia-ml-py``, imported lazily to count GPUs);
it never imports :mod:`maze.backends` or :mod:`maze.notebook`: they import it.
A run's state lives in one :class:`~maze.core.run.RunState`, changed only by
its transitions, which the :class:`~maze.core.scheduler.Engine` calls; readers
see it as a :class:`~maze.core.protocol.RunView`.
"""
