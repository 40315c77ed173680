"""What a user installs: the sdist and wheel built from the tracked tree, in a fresh venv.

The tracked files (``git ls-files``, as they are in the working tree, so a change is
tested before it is committed; untracked files are left out, as a release would leave
them) are copied into a temporary folder and built with ``python -m build`` (the sdist,
then the wheel from the sdist, as PyPI users get them). The wheel goes into a new
virtual environment without the system's site-packages, with its dependencies from the
package index, and the README's first example runs there as a plain script.
"""

from __future__ import annotations

import ast
import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import maze

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DATA = ["maze/py.typed", "maze/notebook/dag.js", "maze/notebook/dag.css"]


def tracked_tree(dest: Path) -> Path:
    """Copy the tracked files, as they are in the working tree, into ``dest``."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, names.decode().split("\0")):
        src = ROOT / name
        if not os.path.lexists(src):
            continue  # deleted in the working tree, not yet committed
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    return dest


def readme_example() -> tuple[str, str]:
    """The README's first Python example as a script, and the result its last line's comment shows."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S)
    assert code, "the README has no python example"
    source = code.group(1)
    last = source.rstrip().splitlines()[-1]
    expected = last.split("#", 1)[1].strip()
    tree = ast.parse(source)
    # In a notebook the last expression shows its value; a script prints it instead.
    if isinstance(tree.body[-1], ast.Expr):
        tree.body[-1] = ast.Expr(ast.Call(ast.Name("print", ast.Load()), [tree.body[-1].value], []))
    return ast.unparse(ast.fix_missing_locations(tree)), expected


def test_the_wheel_installs_in_a_fresh_venv_and_runs_the_readme_example(tmp_path):
    src = tracked_tree(tmp_path / "src")
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (sdist,) = dist.glob("maze_dag-*.tar.gz")
    (wheel,) = dist.glob("maze_dag-*-py3-none-any.whl")
    assert sdist.name == f"maze_dag-{maze.__version__}.tar.gz"

    # The sdist carries the licence and the package data; the wheel too, with the metadata.
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    for name in ["LICENSE", "pyproject.toml", "README.md", *PACKAGE_DATA]:
        assert name in members, f"{name} missing from {sdist.name}"
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(whl.read(info))
        entry_points = whl.read(info.replace("METADATA", "entry_points.txt")).decode()
    for name in PACKAGE_DATA:
        assert name in names, f"{name} missing from {wheel.name}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["Name"] == "maze-dag" and meta["Version"] == maze.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert "anywidget" in " ".join(meta.get_all("Requires-Dist"))
    assert "Operating System :: POSIX :: Linux" in meta.get_all("Classifier")
    assert "maze = maze.cli:main" in entry_points

    # A fresh venv, isolated from this one: the wheel and its dependencies from the index.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]

    work = tmp_path / "work"
    work.mkdir()
    script, expected = readme_example()
    (work / "example.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "MAZE_"))}
    env["MAZE_HISTORY"] = str(tmp_path / "history.sqlite3")  # the example's run goes to a throw-away history
    env["MAZE_CACHE"] = str(tmp_path / "cache")
    ran = subprocess.run([str(python), "example.py"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = ran.stdout
    # Progress as it happens: each task started and finished, then the summary line, then the result.
    for name in ("load_data", "clean_data"):
        assert re.search(rf"started\s+{name}\b", out), out
        assert re.search(rf"finished\s+{name}\b", out), out
    assert "workflow completed" in out, out
    assert out.rstrip().splitlines()[-1] == expected, out

    # The installed package is the one that ran (not this checkout), and the command works.
    where = subprocess.run([str(python), "-c", "import maze; print(maze.__file__, maze.__version__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=60)
    path, version = where.stdout.split()
    assert Path(path).is_relative_to(venv) and version == maze.__version__, where.stdout
    cli = subprocess.run([str(venv / "bin" / "maze"), "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and maze.__version__ in cli.stdout + cli.stderr, cli.stdout + cli.stderr
