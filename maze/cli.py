"""maze's command line: the run history, from a terminal or a CI log.

``maze runs`` lists recent runs, ``maze show RUN_ID`` replays one (its
progress and summary; the exit code says how it ended), ``maze graph RUN_ID
-o dag.svg`` draws its DAG in its final states and ``maze prune --keep-last N``
removes older runs. ``python -m maze`` is the same program.

Everything goes through :class:`~maze.client.MaClient` and its history
methods, with the ``inline`` backend: reading the history starts no worker
process. A run id may be given by a unique prefix (``run-3fa2``, or just
``3fa2``), as task ids are elsewhere in maze.

Exit codes: 0 done (for ``show``: the run completed); 1 the run shown failed,
was cancelled or interrupted; 2 bad input (an unknown run id, a history that
is not one, a file maze cannot write, no Graphviz for a picture); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import TextIO

from maze import __version__
from maze.client import MaClient
from maze.core.errors import MazeError, RendererError, UnknownRunError, UnsafeHistoryError
from maze.core.fold import RunFold
from maze.core.graphviews import find_dot, render
from maze.core.history import default_path
from maze.core.progress import clock_text
from maze.core.report import encodable
from maze.core.workflow import show_progress
from maze.notebook.render import to_dot

#: What ``maze graph`` writes, by the output file's suffix.
GRAPH_FORMATS = ("svg", "png", "pdf", "dot")
_INSTALL_GRAPHVIZ = "apt-get install graphviz, brew install graphviz, or pip install graphviz-pure"


class CliError(Exception):
    """Bad input: the message is printed as is, and the exit code is 2."""


# -- the commands ------------------------------------------------------------------------------------

def cmd_runs(args: argparse.Namespace, out: TextIO) -> int:
    path = _history_path(args)
    if not path.exists():
        print(f"no run history at {path} yet: runs are recorded there as they happen "
              f"(--history PATH or $MAZE_HISTORY names another file)", file=out)
        return 0
    with _client(path) as client:
        runs = client.runs(args.workflow, args.limit)
    if not runs:
        which = f" of workflow {args.workflow!r}" if args.workflow else ""
        print(f"no runs{which} in {path}", file=out)
        return 0
    now = time.time()
    rows = [("RUN ID", "WORKFLOW", "STATUS", "TASKS", "STARTED", "DURATION")]
    rows += [(r["run_id"], r["workflow"], r["status"], f"{r['tasks']:,}", _when(r["started_at"]),
              _duration(r["started_at"], r["ended_at"], now)) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {3, 5}  # numbers line up on the right
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells).rstrip(), file=out)
    return 0


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    path = _existing_history(args)
    verbose = True if args.verbose else (False if args.compact else None)
    with _client(path) as client:
        run_id = _resolve(client, args)
        try:
            summary = client.show_results(run_id, file=out, verbose=verbose)
        except UnsafeHistoryError as exc:
            # Result values are kept as pickles, loaded only from a private file; the rest is JSON and safe to read.
            print(f"maze: showing run {run_id} without its result values: {exc}", file=sys.stderr)
            summary = show_progress(client.run_state(run_id, values=False), None, out, verbose)
    return 0 if summary["status"] == "completed" else 1


def cmd_graph(args: argparse.Namespace, out: TextIO) -> int:
    path = _existing_history(args)
    target = Path(args.output)
    fmt = target.suffix.lstrip(".").lower()
    if fmt not in GRAPH_FORMATS:
        raise CliError(f"cannot tell what to write from the name {str(target)!r}: end it with one of "
                       f"{', '.join('.' + f for f in GRAPH_FORMATS)} (e.g. -o dag.svg)")
    if not target.parent.resolve().is_dir():
        raise CliError(f"cannot write {str(target)!r}: the folder {str(target.parent)!r} does not exist")
    with _client(path) as client:
        run_id = _resolve(client, args)
        run = client.run_state(run_id, values=False)  # colours need states only, never the pickled values
        with run.changed:
            recorded = list(run.messages)
    # As every picture reads a run: its messages, by the one fold (a run still going has running tasks).
    fold = RunFold(tuple(run.plan.tasks))
    fold.apply(recorded)
    states = {tid: view.value for tid, view in fold.states.items()}
    dot = to_dot(run.plan, states)
    if fmt == "dot":
        target.write_text(dot + "\n", encoding="utf-8")
    else:
        if find_dot() is None:
            raise CliError(f"drawing a .{fmt} needs Graphviz's `dot` program, which is not installed: install it "
                           f"({_INSTALL_GRAPHVIZ}), or write the DOT source instead: "
                           f"maze graph {args.run_id} -o {target.with_suffix('.dot')}")
        try:
            data = render(dot, fmt)
        except RendererError as exc:
            raise CliError(str(exc)) from None
        target.write_bytes(data)
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    print(f"wrote {target}: run {run_id} ({run.plan.name}), {run.status.value}; "
          + ", ".join(f"{n:,} {state}" for state, n in counts.items()), file=out)
    return 0


def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    path = _history_path(args)
    if not path.exists():
        print(f"no run history at {path}: nothing to remove", file=out)
        return 0
    with _client(path) as client:
        removed = client.delete_runs(keep_last=args.keep_last)
        left = len(client.runs())
    print(f"removed {removed:,} run{'s' if removed != 1 else ''} from {path}; {left:,} left "
          f"(the newest {args.keep_last:,}, and any still going, are kept)", file=out)
    return 0


# -- helpers -----------------------------------------------------------------------------------------

def _history_path(args: argparse.Namespace) -> Path:
    return Path(args.history) if args.history else default_path()


def _existing_history(args: argparse.Namespace) -> Path:
    path = _history_path(args)
    if not path.exists():
        raise CliError(f"no run history at {path}, so no run {args.run_id!r}; name the file with --history PATH "
                       f"(or $MAZE_HISTORY)")
    return path


def _client(path: Path) -> MaClient:
    # The inline backend: reading the history needs no worker process.
    return MaClient(backend="inline", history=path)


def _resolve(client: MaClient, args: argparse.Namespace) -> str:
    """``args.run_id``: a run id, or a unique prefix of one (with or without its ``run-``)."""
    text, path = args.run_id, _history_path(args)
    ids = [r["run_id"] for r in client.runs()]
    if text in ids:
        return text
    for prefix in (text, f"run-{text}"):
        matches = [run_id for run_id in ids if run_id.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(matches[:10]) + (f" and {len(matches) - 10} more" if len(matches) > 10 else "")
            raise CliError(f"run id prefix {text!r} is ambiguous in {path}: it matches {shown}; give more of it")
        if prefix.startswith("run-"):
            break  # "run-..." already tried as is
    listing = f"maze runs --history {path}" if args.history else "maze runs"
    raise CliError(f"no run {text!r} in the history at {path}; `{listing}` lists the runs it holds")


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _duration(started: float, ended: float | None, now: float) -> str:
    if ended is None:
        return f"{_seconds(now - started)} so far"
    return _seconds(ended - started)


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else clock_text(s)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, 0 or more")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number greater than 0")
    return min(value, 2**62)   # more than any history holds; SQL's LIMIT takes 64-bit numbers only


# -- the parser --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    history = argparse.ArgumentParser(add_help=False)
    history.add_argument("--history", metavar="PATH",
                         help="the run history file (default: $MAZE_HISTORY, else ~/.local/share/maze/runs.sqlite3)")
    parser = argparse.ArgumentParser(
        prog="maze",
        description="Look at maze's run history: list runs, replay one, draw its DAG, remove old ones.",
        epilog="A run id may be shortened to any unique prefix (run-3fa2, or 3fa2). "
               "Exit codes: 0 ok; 1 the run shown did not complete; 2 bad input. See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"maze {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("runs", parents=[history], help="list recent runs, newest first",
                       description="List recent runs, newest first: id, workflow, status, tasks, start, duration.")
    p.add_argument("--limit", "-n", type=_positive, default=20, metavar="N", help="show at most N runs (default 20)")
    p.add_argument("--workflow", "-w", metavar="NAME", help="only the runs of this workflow (name or id)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("show", parents=[history], help="replay a run's progress and print its summary",
                       description="Replay a run's progress and print its summary; a run still going in another "
                                   "process is followed to its end. Exit code 0 if the run completed, 1 if it "
                                   "failed, was cancelled or interrupted, 2 if there is no such run.")
    p.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix of one")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--verbose", "-v", action="store_true", help="a line per event, whatever the run's size")
    how.add_argument("--compact", action="store_true",
                     help="one progress line and the summary, whatever the run's size")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("graph", parents=[history], help="draw a run's DAG, coloured by its tasks' final states",
                       description="Draw a run's DAG, each task coloured by its final state (a large DAG is drawn "
                                   "by groups). .svg, .png and .pdf need Graphviz's `dot`; .dot writes the source.")
    p.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix of one")
    p.add_argument("--output", "-o", required=True, metavar="FILE",
                   help="where to write: the suffix (.svg, .png, .pdf, .dot) chooses the format")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("prune", parents=[history], help="remove all but the newest runs from the history",
                       description="Remove all but the newest N runs from the history (runs still going are kept).")
    p.add_argument("--keep-last", type=_count, required=True, metavar="N", help="how many of the newest runs to keep")
    p.set_defaults(func=cmd_prune)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed by argparse)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    out = encodable(sys.stdout)
    try:
        code: int = args.func(args, out)
        return code
    except BrokenPipeError:
        # The reader went away (`maze runs | head`): say nothing more, and let the exit not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except CliError as exc:
        print(f"maze {args.command}: {exc}", file=sys.stderr)
    except (UnknownRunError, UnsafeHistoryError, MazeError, ValueError, OSError) as exc:
        print(f"maze {args.command}: {_text(exc)}", file=sys.stderr)
    except sqlite3.Error as exc:   # not a database, damaged, or unreadable
        where = getattr(args, "history", None) or default_path()
        print(f"maze {args.command}: cannot read the run history {where}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 2


def _text(exc: BaseException) -> str:
    # KeyError-based errors (UnknownRunError) print their message quoted; the text is what we want.
    return str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else str(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
