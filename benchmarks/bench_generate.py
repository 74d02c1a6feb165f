"""How fast is `peft-scaffold new`? Measured side by side with `python -c "import peft"` in one run.

Prints wall times (median of --repeat runs, each a fresh process) and the ratios:
- `new SPEC --out DIR` (files only) / import peft
- `new SPEC --peft-root TREE` (files + registration in a fresh PEFT 0.21.2 tree) / import peft  (goal < 0.15)
- for scale: importing the libraries `new --peft-root` uses, and nothing else
"""

from __future__ import annotations

import argparse
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

    base = statistics.median(import_peft)
    rows = [
        ("python -c 'import peft'", base),
        ("new --out (files only)", statistics.median(files_only)),
        ("new --peft-root (files + registration)", statistics.median(into_tree)),
        ("  of which library imports, at least", statistics.median(imports_only)),
    ]
    print(f"{'command':<42} {'median s':>9} {'ratio':>7}")
    for label, seconds in rows:
        print(f"{label:<42} {seconds:>9.3f} {seconds / base:>7.3f}")
    print(f"(median of {args.repeat} fresh processes each; ratio = time / import peft)")


if __name__ == "__main__":
    main()
