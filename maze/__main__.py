"""``python -m maze``: the same command line as ``maze`` (see :mod:`maze.cli`)."""

from __future__ import annotations

import sys

from maze.cli import main

sys.exit(main())
