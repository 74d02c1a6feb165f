"""How fast is `peft-scaffold new`? Measured side by side with `python -c "import peft"` in one run.

Prints wall times (median and best of --repeat runs, each a fresh process; a shared machine's noise moves the
median more than the best) and the ratios:
- `new SPEC --out DIR` (files only) / import peft
- `new SPEC --peft-root TREE` (files + registration in a fresh PEFT 0.21.2 tree) / import peft  (goal < 0.15)
- for scale: importing the libraries `new --peft-root` uses, and nothing else

The package's bytecode is compiled first, as pip compiles an installed package's.
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scaffold.peft_source import copy_peft_tree, ensure_peft_sdist  # noqa: E402


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--spec", default=str(REPO / "reference_methods" / "lora.yaml"))
    args = parser.parse_args()

    sdist = ensure_peft_sdist()
    # Like for like: pip compiled peft's bytecode when it installed it, so compile ours too. Without this, a checkout
    # run under PYTHONDONTWRITEBYTECODE=1 (as on this project's CI machines) compiles every module on every run.
    compileall.compile_dir(str(REPO / "scaffold"), quiet=1)
    cli = [sys.executable, "-m", "scaffold", "new", args.spec]
    libraries = "import typer, typer._adapters, pydantic, jinja2, yaml, rich.console, libcst"
    import_peft, files_only, into_tree, imports_only = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            import_peft.append(timed([sys.executable, "-c", "import peft"]))
            files_only.append(timed([*cli, "--out", f"{tmp}/out{i}"]))
            tree = copy_peft_tree(sdist, Path(tmp) / f"tree{i}")
            into_tree.append(timed([*cli, "--peft-root", str(tree)]))
            imports_only.append(timed([sys.executable, "-c", libraries]))

    rows = [
        ("python -c 'import peft'", import_peft),
        ("new --out (files only)", files_only),
        ("new --peft-root (files + registration)", into_tree),
        ("  of which library imports, at least", imports_only),
    ]
    base, best_base = statistics.median(import_peft), min(import_peft)
    print(f"{'command':<42} {'median s':>9} {'ratio':>7} {'best s':>8} {'ratio':>7}")
    for label, times in rows:
        median, best = statistics.median(times), min(times)
        print(f"{label:<42} {median:>9.3f} {median / base:>7.3f} {best:>8.3f} {best / best_base:>7.3f}")
    print(f"({args.repeat} fresh processes each, interleaved; ratio = time / import peft, medians and bests apart)")


if __name__ == "__main__":
    main()
