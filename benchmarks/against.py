"""Run a benchmark script against the ``compinterp`` package of another tree (an older commit's worktree), for
before/after tables measured side by side.

An editable install's import hook finds this checkout's package before anything on ``PYTHONPATH``, so
``PYTHONPATH=OLD python bench.py`` would time this tree twice; this drops that hook, puts ``TREE`` first on the path,
checks that ``compinterp`` now comes from it, and runs ``SCRIPT`` (its own directory on the path, as Python runs
a script) with the remaining arguments:

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/against.py /tmp/before benchmarks/bench_refine.py --threads 1 --searches 5
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(f"usage: {Path(sys.argv[0]).name} TREE SCRIPT [ARGS...]")
    tree, script = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    if not (tree / "compinterp" / "__init__.py").is_file():
        sys.exit(f"{tree} holds no compinterp package (expected {tree / 'compinterp' / '__init__.py'})")
    if not script.is_file():
        sys.exit(f"no benchmark script at {script}")
    sys.meta_path = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
    sys.path[:0] = [str(tree), str(script.parent)]
    import compinterp

    if not Path(compinterp.__file__).resolve().is_relative_to(tree):
        sys.exit(f"compinterp still imports from {compinterp.__file__}, not from {tree}")
    sys.argv = [str(script), *sys.argv[3:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
