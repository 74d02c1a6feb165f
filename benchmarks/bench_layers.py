"""The generated reference LoRA (reference_methods/lora.yaml, `reflora`) against PEFT's own LoRA, side by side in one
run, on one layer of each kind the spec lists without a hand-written forward, and the one it has:

- Linear 4096 x 4096, input 4 x 64 tokens
- Embedding 64000 x 1024, input 8 x 128 tokens
- Conv2d 128 -> 128, 3 x 3, padding 1, input 8 x 128 x 32 x 32

A step is forward + backward + SGD step (r=8, lora_alpha=16, dropout 0), on CPU. Both adapters get the same weights
(the script checks that the outputs agree first).

- step time: one worker process per layer holds both models and alternates them step by step (interleaved repeats),
  so that drift on a shared machine hits both alike; the median (and best) wall time of each is reported, and the
  median CPU time of the process (with one thread, the time the step computed, not counting the time the process
  waited for a core on a loaded machine).
- peak memory: a fresh process per (method, layer) builds the model and runs a few steps; reported are the
  process's peak resident set (`ru_maxrss`), how far the steps raised it above the resident set just before them
  (both include the allocator's slack, so they wobble by an activation or so between runs: medians of
  `--memory-runs` processes are reported), and the exact peak of
  torch's CPU allocations during one step (the profiler's memory timeline; torch's CPU allocations are invisible
  to tracemalloc).

The reflora method is generated into a fresh copy of the cached PEFT 0.21.2 tree, whose `peft` the workers import.
Goal: every ratio generated / PEFT <= 1.05.

    .venv/bin/python benchmarks/bench_layers.py [--repeats 15] [--threads 1] [--layers linear,embedding,conv2d]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parent.parent
MARKER = "BENCH_LAYERS_JSON: "
LAYERS = ("linear", "embedding", "conv2d")
METHODS = ("peft", "generated")
R, ALPHA = 8, 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per model (interleaved)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise on a shared machine)")
    parser.add_argument("--memory-runs", type=int, default=3, help="fresh processes per (method, layer); medians")
    parser.add_argument("--layers", default=",".join(LAYERS), help="comma-separated subset of " + ", ".join(LAYERS))
    parser.add_argument("--tree", type=Path, help="a PEFT tree with reflora registered (default: make one)")
    parser.add_argument("--time-worker", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_worker:
        print(MARKER + json.dumps(measure_time(args.time_worker, args.repeats, args.threads)), flush=True)
        return
    if args.memory_worker:
        method, layer = args.memory_worker
        print(MARKER + json.dumps(measure_memory(method, layer, args.threads)), flush=True)
        return

    layers = [layer for layer in args.layers.split(",") if layer]
    unknown = set(layers) - set(LAYERS)
    if unknown:
        sys.exit(f"--layers: unknown {', '.join(sorted(unknown))} (choose from {', '.join(LAYERS)})")
    with tempfile.TemporaryDirectory(prefix="bench-layers-") as tmp:
        tree = args.tree or make_tree(Path(tmp))
        results = {}
        for layer in layers:
            common = ["--repeats", str(args.repeats), "--threads", str(args.threads)]
            timing = worker(tree, ["--time-worker", layer, *common])
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
            for _ in range(args.memory_runs):  # interleaved too; the medians damp the allocator's wobble
                for m in METHODS:
                    runs[m].append(worker(tree, ["--memory-worker", m, layer, *common]))
            memory = {m: {key: statistics.median(r[key] for r in runs[m]) for key in runs[m][0]} for m in METHODS}
            results[layer] = {"time": timing, "memory": memory}
    report(results, args.threads, args.repeats)


def make_tree(tmp: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from scaffold import pipeline
    from scaffold.peft_source import copy_peft_tree, ensure_peft_sdist

    tree = copy_peft_tree(ensure_peft_sdist(), tmp / "peft")
    pipeline.generate_into_tree(REPO / "reference_methods" / "lora.yaml", tree).changeset.apply()
    return tree


def worker(tree: Path, args: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(tree / "src")
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"benchmark worker {args} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[0][len(MARKER) :])


def report(results: dict[str, Any], threads: int, repeats: int) -> None:
    print(
        f"reflora (generated) vs PEFT LoRA, r={R}, fwd + bwd + SGD step, CPU, {threads} thread(s), {repeats} repeats"
    )
    header = f"{'layer':<10} {'measure':<28} {'PEFT':>10} {'generated':>10} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for layer, result in results.items():
        timing, memory = result["time"], result["memory"]
        rows = [
            ("step time (ms, median)", timing["peft_ms"], timing["generated_ms"]),
            ("step time (ms, best)", timing["peft_best_ms"], timing["generated_best_ms"]),
            ("step CPU time (ms, median)", timing["peft_cpu_ms"], timing["generated_cpu_ms"]),
            ("peak RSS (MiB)", memory["peft"]["peak_mib"], memory["generated"]["peak_mib"]),
            ("peak RSS over pre-step (MiB)", memory["peft"]["step_mib"], memory["generated"]["step_mib"]),
            ("torch allocations peak (MiB)", memory["peft"]["torch_peak_mib"], memory["generated"]["torch_peak_mib"]),
        ]
        for label, peft_value, gen_value in rows:
            ratio = gen_value / peft_value if peft_value else float("nan")
            print(f"{layer:<10} {label:<28} {peft_value:>10.1f} {gen_value:>10.1f} {ratio:>7.3f}")
        print(f"{layer:<10} max |output difference| PEFT vs generated: {timing['max_abs_diff']:.2e}")
    print("goal: every ratio <= 1.05")


# ---------------------------------------------------------------------------------------------------------------------
# the workers (import torch and the tree's peft)


def build(layer: str, method: str) -> tuple[Any, Any]:
    """A model with one adapted layer of kind `layer` and an input for it; `method` is "peft" or "generated"."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn

    torch.manual_seed(0)
    if layer == "linear":
        base: nn.Module = nn.Linear(4096, 4096)
        x = torch.randn(4, 64, 4096)
    elif layer == "embedding":
        base = nn.Embedding(64000, 1024)
        x = torch.randint(0, 64000, (8, 128))
    else:
        base = nn.Conv2d(128, 128, 3, padding=1)
        x = torch.randn(8, 128, 32, 32)
    model = nn.Sequential(base)
    torch.manual_seed(1)
    if method == "peft":
        config: Any = LoraConfig(target_modules=["0"], r=R, lora_alpha=ALPHA, init_lora_weights=False)
    else:
        from peft import RefLoraConfig  # type: ignore[attr-defined]  # registered in the tree by `make_tree`

        config = RefLoraConfig(target_modules=["0"], r=R, lora_alpha=ALPHA, init_weights=False)
    return get_peft_model(model, config), x


def adapter_factors(model: Any) -> tuple[Any, Any]:
    """(A, B) of the model's adapter in the canonical (r, in) / (out, r) view, whichever method it is."""
    for name, param in model.named_parameters():
        if "lora_A" in name or "lora_embedding_A" in name:
            a = param
        elif "lora_B" in name or "lora_embedding_B" in name:
            b = param
    return a, b


def copy_adapter(source: Any, target: Any) -> None:
    import torch

    with torch.no_grad():
        for src, dst in zip(adapter_factors(source), adapter_factors(target)):
            dst.copy_(src.reshape(dst.shape))


def step_fn(model: Any, x: Any) -> Any:
    import torch

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step() -> float:
        out = model(x)
        loss = out.square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def measure_time(layer: str, repeats: int, threads: int) -> dict[str, Any]:
    import warnings

    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    models = {m: build(layer, m) for m in METHODS}
    copy_adapter(models["peft"][0], models["generated"][0])
    with torch.no_grad():
        outputs = [models[m][0](models[m][1]) for m in METHODS]
    max_abs_diff = (outputs[0] - outputs[1]).abs().max().item()
    steps = {m: step_fn(*models[m]) for m in METHODS}
    for _ in range(2):  # warm up
        for m in METHODS:
            steps[m]()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    cpu_times: dict[str, list[float]] = {m: [] for m in METHODS}
    for i in range(repeats):
        order = METHODS if i % 2 == 0 else METHODS[::-1]  # neither always runs first
        for m in order:
            start, cpu_start = time.perf_counter(), time.process_time()
            steps[m]()
            times[m].append((time.perf_counter() - start) * 1000)
            cpu_times[m].append((time.process_time() - cpu_start) * 1000)
    out: dict[str, Any] = {"max_abs_diff": max_abs_diff}
    for m in METHODS:
        out[f"{m}_ms"] = statistics.median(times[m])
        out[f"{m}_best_ms"] = min(times[m])
        out[f"{m}_cpu_ms"] = statistics.median(cpu_times[m])
    return out


def measure_memory(method: str, layer: str, threads: int) -> dict[str, Any]:
    import gc
    import resource
    import warnings

    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    model, x = build(layer, method)
    step = step_fn(model, x)
    gc.collect()
    before = _rss_kib()
    for _ in range(3):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_mib": peak / 1024, "step_mib": max(peak - before, 0) / 1024, "torch_peak_mib": torch_peak_mib(step)}


def torch_peak_mib(fn: Any) -> float:
    """Peak CPU memory allocated by torch while `fn` runs (the profiler's memory timeline, all categories)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return max(sum(row) for row in sizes) / 2**20


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


if __name__ == "__main__":
    main()
