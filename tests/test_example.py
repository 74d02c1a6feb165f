"""The generated example, benchmark and docs page (templates/examples/**, templates/docs/page.md.j2).

Fast: what is generated for every spec (paths, the modules the example adapts, taken from the plan), and the docs
page parsed back as markdown (headings, the config table, the usage snippet, `[[autodoc]]` blocks) and its toctree
entry parsed back as YAML. Slow: the reference LoRA generated into a PEFT 0.21.2 tree, its example run plainly and
under `accelerate launch --cpu --num_processes 2` (adapter reload, merge, safetensors, ONNX Runtime checks), and its
benchmark run at a tiny size with `--json`.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.kinds.tuner.example import example_model
from scaffold.kinds.tuner.files import render_docs_page, render_method
from scaffold.plan import build_plan
from scaffold.render import Layout
from scaffold.spec import load_spec, spec_from_data
from tests.conftest import add_fake_docs


REPO = Path(__file__).resolve().parent.parent
SPECS = [REPO / "reference_methods" / "lora.yaml", *sorted((REPO / "tests" / "specs").glob("*.yaml"))]
GENERIC_FIELDS = ["target_modules", "exclude_modules", "init_weights", "layers_to_transform", "layers_pattern"]


def _plan(spec_path: Path, **changes):
    data = yaml.safe_load(spec_path.read_text())
    data.update(changes)
    return build_plan(spec_from_data(data, str(spec_path)))


def _assigned(source: str, name: str):
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not assigned")


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_every_method_gets_an_example_dir_whose_targets_come_from_the_plan(spec_path):
    plan = build_plan(load_spec(spec_path))
    files = render_method(plan, layout=Layout.STANDALONE, year=2026)
    example_dir = f"examples/{plan.name}"
    assert {
        f"{example_dir}/README.md",
        f"{example_dir}/{plan.name}_benchmark.py",
        f"{example_dir}/{plan.name}_example.py",
    } <= set(files)
    expected = plan.target_modules["llama"] if isinstance(plan.target_modules, dict) else ["q_proj", "v_proj"]
    for script in (f"{example_dir}/{plan.name}_example.py", f"{example_dir}/{plan.name}_benchmark.py"):
        assert _assigned(files[script], "TARGET_MODULES") == expected
        assert f"from {plan.name} import {plan.config_cls}" in files[script]
    assert "accelerate launch --cpu --num_processes 2" in files[f"{example_dir}/README.md"]


def test_example_model_follows_the_layer_types():
    kron = REPO / "tests" / "specs" / "kron.yaml"  # Linear only, targets: LoRA's mapping
    embedding_only = example_model(_plan(kron, layers=["Embedding"], forward={}))
    assert embedding_only is not None and embedding_only.target_modules == ["embed_tokens"]
    conv1d_plan = _plan(kron, layers=["Conv1D"])
    conv1d_only = example_model(conv1d_plan)
    assert conv1d_only is not None and (conv1d_only.model_type, conv1d_only.target_modules) == ("gpt2", ["c_attn"])
    gpt2_files = render_method(conv1d_plan, layout=Layout.STANDALONE)
    assert "GPT2LMHeadModel(config)" in gpt2_files["examples/kronfrozen/kronfrozen_example.py"]
    assert "fan_in_fan_out=True" in gpt2_files["examples/kronfrozen/kronfrozen_benchmark.py"]
    own = example_model(_plan(kron, target_modules={"llama": ["o_proj"], "gpt2": ["c_proj"]}))
    assert own is not None and own.target_modules == ["o_proj"]  # the spec's own mapping wins
    # a method for convolutions only: no tiny language model has its layers, so no example (rather than a broken one)
    conv_plan = _plan(kron, layers=["Conv2d"], forward={})
    assert example_model(conv_plan) is None
    assert not any(path.startswith("examples/") for path in render_method(conv_plan, layout=Layout.STANDALONE))


def test_benchmark_compares_at_the_methods_rank_or_says_it_uses_r8():
    lora = REPO / "reference_methods" / "lora.yaml"
    files = render_method(_plan(lora), layout=Layout.STANDALONE)
    benchmark = files["examples/reflora/reflora_benchmark.py"]
    assert '"reflora": RefLoraConfig(target_modules=TARGET_MODULES, r=rank)' in benchmark
    assert '"lora": LoraConfig(target_modules=TARGET_MODULES, r=rank)' in benchmark
    kron = build_plan(load_spec(REPO / "tests" / "specs" / "kron.yaml"))  # no rank hyperparameter
    benchmark = render_method(kron, layout=Layout.STANDALONE)["examples/kronfrozen/kronfrozen_benchmark.py"]
    docstring = " ".join(str(ast.get_docstring(ast.parse(benchmark))).split())
    assert f"r=8: {kron.title} has no rank hyperparameter" in docstring
    assert "KronfrozenConfig(target_modules=TARGET_MODULES)," in benchmark


def _page_structure(page: str) -> tuple[list[str], list[list[str]], list[str], str]:
    """(headings, table rows as cells, code blocks, plain text) of a markdown page."""
    tokens = MarkdownIt("commonmark").enable("table").parse(page)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    rows: list[list[str]] = []
    for i, token in enumerate(tokens):
        if token.type == "tr_open":
            row = []
            for j in range(i + 1, len(tokens)):
                if tokens[j].type == "tr_close":
                    break
                if tokens[j].type == "inline":
                    row.append(tokens[j].content)
            rows.append(row)
    code = [t.content for t in tokens if t.type == "fence"]
    text = "\n".join(t.content for t in tokens if t.type == "inline")
    return headings, rows, code, text


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_docs_page_parses_with_the_sections_peft_asks_for(spec_path):
    plan = build_plan(load_spec(spec_path))
    page = render_docs_page(plan, year=2026)
    headings, rows, code, text = _page_structure(page)
    assert headings[0] == plan.title
    assert f"When to use {plan.title} instead of LoRA" in headings
    assert {"How it works", "Configuration", "Usage", plan.config_cls, plan.model_cls} <= set(headings)
    assert rows[0] == ["Parameter", "Type", "Default", "Bounds", "Description"]
    table = {row[0].strip("`"): row for row in rows[1:]}
    assert list(table)[: len(plan.hyperparameters)] == [hp.name for hp in plan.hyperparameters]
    assert set(GENERIC_FIELDS) <= set(table)
    for hp in plan.hyperparameters:
        name, type_, default, bounds, help_ = table[hp.name]
        assert default == f"`{hp.default}`"
        assert hp.spec.type in type_ or hp.spec.type == "enum"
        if hp.spec.min is not None:
            assert f">= {hp.spec.min:g}" in bounds
        if hp.help:
            assert help_ == " ".join(hp.help.split())
    (snippet,) = code
    ast.parse(snippet)  # the usage snippet is valid Python
    assert f"from peft import {plan.config_cls}, get_peft_model" in snippet
    assert f"[[autodoc]] tuners.{plan.name}.config.{plan.config_cls}" in text
    assert f"[[autodoc]] tuners.{plan.name}.model.{plan.model_cls}" in text
    if plan.spec.math:
        assert f"$$\n{plan.spec.math}\n$$" in page


def test_docs_page_states_when_to_use_the_method(tmp_path):
    lora = REPO / "reference_methods" / "lora.yaml"
    advice = "Prefer it when you need the update to match PEFT's LoRA exactly."
    spec = tmp_path / "lora.yaml"
    spec.write_text(yaml.safe_dump({**yaml.safe_load(lora.read_text()), "when_to_use": advice}))
    result = CliRunner().invoke(app, ["new", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "docs" / "reflora.md").read_text()
    _, _, _, text = _page_structure(page)
    assert advice in text.replace("\n", " ")


def test_when_to_use_is_checked_like_other_prose(tmp_path):
    lora = REPO / "reference_methods" / "lora.yaml"
    spec = tmp_path / "lora.yaml"
    spec.write_text(yaml.safe_dump({**yaml.safe_load(lora.read_text()), "when_to_use": 'with """ quotes'}))
    result = CliRunner().invoke(app, ["check", str(spec)])
    assert result.exit_code == 2
    assert "when_to_use" in result.output and "Traceback" not in result.output


def test_docs_page_and_toctree_entry_in_a_tree_with_docs(peft_tree):
    add_fake_docs(peft_tree)
    result = CliRunner().invoke(app, ["new", str(SPECS[0]), "--peft-root", str(peft_tree)])
    assert result.exit_code == 0, result.output
    plan = build_plan(load_spec(SPECS[0]))
    page = (peft_tree / "docs" / "source" / "package_reference" / f"{plan.name}.md").read_text()
    assert page == render_docs_page(plan)  # the full generated page, not the registrar's minimal one
    headings, _, _, _ = _page_structure(page)
    assert "Configuration" in headings
    toc = yaml.safe_load((peft_tree / "docs" / "source" / "_toctree.yml").read_text())

    def entries(node):
        if isinstance(node, dict):
            if "local" in node:
                yield node["local"], node.get("title")
            for value in node.values():
                yield from entries(value)
        elif isinstance(node, list):
            for value in node:
                yield from entries(value)

    assert (f"package_reference/{plan.name}", plan.title) in list(entries(toc))
    manifest_text = "\n".join(p.read_text() for p in peft_tree.rglob("*.json") if "peft-scaffold" in p.read_text())
    assert "## Configuration" not in manifest_text  # the page is recorded as a file, not copied into the manifest


# -- running what was generated (slow) --------------------------------------------------------------------------


def _run(
    args: list[str], cwd: Path, tree: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(tree / "src"),  # the tree's peft, where the method is registered
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",  # the same path on machines with and without a GPU
        **(extra_env or {}),
    }
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return result


def _check_example_output(result: subprocess.CompletedProcess[str], out: Path, processes: int) -> None:
    assert f"training on {processes} process(es)" in result.stdout
    assert "loss=" in result.stderr  # the tqdm progress bar shows the loss
    assert "adapter reloaded from" in result.stdout and "merged model: same logits" in result.stdout
    assert "ONNX Runtime (model.onnx): same logits" in result.stdout
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "model.safetensors").is_file()
    assert (out / "merged" / "model.onnx").is_file()


@pytest.mark.slow
def test_reference_example_and_benchmark_run_in_a_peft_tree(peft_tree, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    result = CliRunner().invoke(app, ["new", str(SPECS[0]), "--peft-root", str(peft_tree)])
    assert result.exit_code == 0, result.output
    example_dir = peft_tree / "examples" / "reflora"
    script = "reflora_example.py"

    out = tmp_path / "plain"
    plain = _run([sys.executable, script, "--steps", "3", "--output-dir", str(out)], example_dir, peft_tree)
    _check_example_output(plain, out, processes=1)

    # The command the README gives. accelerate's plain launcher starts ONE process for `--cpu` (several CPU
    # processes need MPI), so it must simply work, like `python`. This run also checks that without ONNX Runtime
    # the example says so and skips the export (a sitecustomize hides the module from the script).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--num_processes", "2"]
    hide = tmp_path / "hide-onnxruntime"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\n\nsys.modules['onnxruntime'] = None\n")
    out = tmp_path / "launch-cpu"
    env = {"PYTHONPATH": f"{peft_tree / 'src'}{os.pathsep}{hide}"}
    cpu = _run([*launch, "--cpu", script, "--steps", "3", "--output-dir", str(out)], example_dir, peft_tree, env)
    assert "ONNX export skipped: onnxruntime not installed" in cpu.stdout
    assert "adapter reloaded from" in cpu.stdout and (out / "merged" / "model.safetensors").is_file()
    assert not (out / "merged" / "model.onnx").exists()
    # Two real data-parallel CPU processes (torch.distributed, gloo): the README's other command.
    out = tmp_path / "ddp"
    env = {"ACCELERATE_USE_CPU": "true"}
    ddp = _run([*launch, "--multi_gpu", script, "--steps", "3", "--output-dir", str(out)], example_dir, peft_tree, env)
    _check_example_output(ddp, out, processes=2)

    size = ["--hidden-size", "32", "--layers", "1", "--seq-len", "16", "--batch-size", "2", "--repeats", "2"]
    bench = _run([sys.executable, "reflora_benchmark.py", "--json", "--cpu", *size], example_dir, peft_tree)
    report = json.loads(bench.stdout)
    assert report["baseline"] == "lora r=8" and report["rank_hyperparameter"] == "r"
    metrics = report["metrics"]
    assert set(metrics) == {"trainable_params", "peak_memory_bytes", "train_step_s", "merged_inference_s"}
    # the reference LoRA has exactly LoRA's parameters at the same rank
    assert metrics["trainable_params"]["reflora"] == metrics["trainable_params"]["lora"] > 0
    assert metrics["trainable_params"]["ratio"] == 1.0
    for row in metrics.values():
        assert row["reflora"] > 0 and row["lora"] > 0 and row["ratio"] == pytest.approx(row["reflora"] / row["lora"])
