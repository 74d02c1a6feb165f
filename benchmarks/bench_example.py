"""Run a method's generated benchmark (examples/<name>/<name>_benchmark.py): generate the spec into a fresh PEFT 0.21.2
tree, then run the script there with the tree's peft, passing the remaining arguments through.

    .venv/bin/python benchmarks/bench_example.py [--spec reference_methods/lora.yaml] [-- --json --repeats 10 ...]

The generated script measures the method and PEFT's LoRA at the same rank side by side in one run (interleaved
repeats) and prints ratios method / LoRA: trainable parameters, train-step time, peak memory, merged inference time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scaffold.peft_source import copy_peft_tree, ensure_peft_sdist  # noqa: E402
from scaffold.pipeline import generate_into_tree  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=REPO / "reference_methods" / "lora.yaml")
    parser.add_argument("benchmark_args", nargs="*", help="passed to the generated benchmark script (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = copy_peft_tree(ensure_peft_sdist(), Path(tmp) / "peft")
        generation = generate_into_tree(args.spec, tree)
        generation.changeset.apply()
        env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1"}
        script = tree / "examples" / generation.name / f"{generation.name}_benchmark.py"
        subprocess.run([sys.executable, str(script), *args.benchmark_args], env=env, check=True)


if __name__ == "__main__":
    main()
