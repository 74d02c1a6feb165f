"""The generated DoRA (reference_methods/dora.yaml, `use_refdora=True`) against PEFT's own (`use_dora=True`), side by
side in one run, on a tiny Llama on CPU.

Generates the variant into a fresh PEFT 0.21.2 tree, then measures in a subprocess that imports that tree's peft:

- train step (forward + backward + AdamW step): median time, and peak memory of one step (torch profiler's memory
  timeline, CPU allocations); goal: ratio generated / PEFT <= 1.00
- eval forward (`model.eval()`, `torch.no_grad()`): median time; the generated variant caches the weight norm while
  no gradient is needed, PEFT's DoRA recomputes it (its own cache, `peft.tuners.lora.dora.ENABLE_DORA_CACHING`, is
  off by default, as it is not invalidated when weights change; a third model with it on is timed for reference)

Both models get the same weights (A, B, magnitude copied), and the script checks that their losses agree. Timings
alternate between the two models step by step, so that drift on a shared machine hits both alike.

    .venv/bin/python benchmarks/bench_dora.py [--steps 40] [--threads 1]
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
MARKER = "BENCH_DORA_JSON: "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per model and mode")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise on a shared machine)")
    parser.add_argument("--tree", type=Path, help="a PEFT tree with refdora registered (default: make one)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(MARKER + json.dumps(measure(args.steps, args.threads)), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="bench-dora-") as tmp:
        tree = args.tree or make_tree(Path(tmp))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["PYTHONPATH"] = str(tree / "src")
        command = [sys.executable, __file__, "--worker", str(tree), "--steps", str(args.steps)]
        command += ["--threads", str(args.threads)]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
        if proc.returncode != 0 or not lines:
            sys.exit(f"benchmark failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    report(json.loads(lines[0][len(MARKER) :]))


def make_tree(tmp: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from scaffold import pipeline
    from scaffold.peft_source import copy_peft_tree, ensure_peft_sdist

    tree = copy_peft_tree(ensure_peft_sdist(), tmp / "peft")
    pipeline.generate_into_tree(REPO / "reference_methods" / "dora.yaml", tree).changeset.apply()
    return tree


def report(result: dict[str, Any]) -> None:
    peft, gen = result["peft"], result["generated"]
    rows = [
        ("train step time (ms, median)", peft["train_ms"], gen["train_ms"], "<= 1.00"),
        ("train step peak memory (MiB)", peft["train_peak_mib"], gen["train_peak_mib"], "<= 1.00"),
        ("eval forward time (ms, median)", peft["eval_ms"], gen["eval_ms"], "< 1.00"),
        ("eval forward peak memory (MiB)", peft["eval_peak_mib"], gen["eval_peak_mib"], ""),
    ]
    print(
        f"tiny Llama {result['model']}, DoRA r={result['r']} on {result['targets']}, CPU, {result['threads']} thread(s)"
    )
    print(f"{'':<34} {'PEFT use_dora':>14} {'use_refdora':>12} {'ratio':>7}  goal")
    for label, a, b, goal in rows:
        print(f"{label:<34} {a:>14.3f} {b:>12.3f} {b / a:>7.3f}  {goal}")
    print(
        f"PEFT with ENABLE_DORA_CACHING=True, eval forward: {result['peft_cached_eval_ms']:.3f} ms "
        f"(ratio generated / that: {gen['eval_ms'] / result['peft_cached_eval_ms']:.3f})"
    )
    print(f"max |loss difference| over the timed steps: {result['max_loss_diff']:.2e}; {result['steps']} steps each")


# ---------------------------------------------------------------------------------------------------------------------
# the worker (imports torch, transformers and the tree's peft)


def measure(steps: int, threads: int) -> dict[str, Any]:
    import copy
    import warnings

    import peft
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import dora
    from transformers import LlamaConfig, LlamaForCausalLM

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=256,
        max_position_embeddings=128,
    )
    base = LlamaForCausalLM(config)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    common = {"target_modules": targets, "r": 8, "lora_alpha": 16, "init_lora_weights": False}
    torch.manual_seed(1)
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(use_dora=True, **common))
    torch.manual_seed(1)
    gen_model = get_peft_model(copy.deepcopy(base), LoraConfig(use_refdora=True, **common))
    with torch.no_grad():  # the same weights, whatever the initialisation did
        gen_params = dict(gen_model.named_parameters())
        for name, param in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:
                target = name.replace("lora_magnitude_vector", "lora_refdora_magnitude").removesuffix(".weight")
                gen_params[target].copy_(param.reshape(-1))
            elif "lora_" in name:
                gen_params[name].copy_(param)
    input_ids = torch.randint(0, config.vocab_size, (8, 64))
    optimizers = {
        "peft": torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3),
        "generated": torch.optim.AdamW([p for p in gen_model.parameters() if p.requires_grad], lr=1e-3),
    }
    models = {"peft": peft_model, "generated": gen_model}

    def train_step(which: str) -> float:
        model, optimizer = models[which], optimizers[which]
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def eval_forward(which: str) -> float:
        with torch.no_grad():
            return models[which](input_ids=input_ids).logits[0, 0, 0].item()

    def timed(fn: Any, which: str) -> tuple[float, float]:
        start = time.perf_counter()
        value = fn(which)
        return (time.perf_counter() - start) * 1000, value

    out: dict[str, Any] = {name: {} for name in models}
    # train: warm up, then alternate the two models step by step (they see the same batches and stay equal)
    for model in models.values():
        model.train()
    for _ in range(3):
        for name in models:
            train_step(name)
    times: dict[str, list[float]] = {name: [] for name in models}
    max_loss_diff = 0.0
    for _ in range(steps):
        losses = {}
        for name in models:
            ms, losses[name] = timed(train_step, name)
            times[name].append(ms)
        max_loss_diff = max(max_loss_diff, abs(losses["peft"] - losses["generated"]))
    for name in models:
        out[name]["train_ms"] = statistics.median(times[name])
        out[name]["train_peak_mib"] = peak_mib(lambda name=name: train_step(name))

    # eval: the same alternation, with a third model, PEFT's DoRA with its own cache on (ENABLE_DORA_CACHING is a
    # global flag; a layer clears its cache whenever it runs with the flag off, so this copy only runs with it on)
    models["peft_cached"] = copy.deepcopy(peft_model)
    for model in models.values():
        model.eval()

    def eval_with_flag(which: str) -> float:
        dora.ENABLE_DORA_CACHING = which == "peft_cached"
        try:
            return eval_forward(which)
        finally:
            dora.ENABLE_DORA_CACHING = False

    for _ in range(3):
        for name in models:
            eval_with_flag(name)
    times = {name: [] for name in models}
    for _ in range(steps):
        for name in models:
            times[name].append(timed(eval_with_flag, name)[0])
    for name in ("peft", "generated"):
        out[name]["eval_ms"] = statistics.median(times[name])
        out[name]["eval_peak_mib"] = peak_mib(lambda name=name: eval_forward(name))
    out["peft_cached_eval_ms"] = statistics.median(times["peft_cached"])
    out.update(
        peft_file=peft.__file__,
        model="(hidden 64, 2 layers, vocab 256), batch 8 x 64 tokens",
        r=8,
        targets="all linear layers",
        threads=threads,
        steps=steps,
        max_loss_diff=max_loss_diff,
    )
    return out


def peak_mib(fn: Any) -> float:
    """Peak CPU memory allocated by torch while `fn` runs (the profiler's memory timeline, all categories)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return max(sum(row) for row in sizes) / 2**20


if __name__ == "__main__":
    main()
