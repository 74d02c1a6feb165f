"""Generation without a PEFT tree: files parse back, are ruff-clean, re-running changes nothing, and the
generation path never imports torch or peft."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.kinds.tuner.files import render_method
from scaffold.plan import build_plan
from scaffold.render import Layout
from scaffold.spec import load_spec, spec_from_data
from scaffold.verify import lint_generated


REPO = Path(__file__).resolve().parent.parent
SPECS = [REPO / "reference_methods" / "lora.yaml", *sorted((REPO / "tests" / "specs").glob("*.yaml"))]
runner = CliRunner()


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_generated_files_parse_and_are_ruff_clean(spec_path, tmp_path):
    result = runner.invoke(app, ["new", str(spec_path), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    plan = build_plan(load_spec(spec_path))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.py"))
    assert files == sorted(
        [
            f"{plan.name}/__init__.py",
            f"{plan.name}/config.py",
            f"{plan.name}/layer.py",
            f"{plan.name}/model.py",
            f"tests/test_{plan.name}.py",
            f"examples/{plan.name}/{plan.name}_example.py",
            f"examples/{plan.name}/{plan.name}_benchmark.py",
        ]
    )
    for rel in files:
        ast.parse((tmp_path / rel).read_text(), filename=rel)
    report = lint_generated(tmp_path, files, mypy=False, first_party=(plan.name,))
    assert report.ok, report.findings


def test_generated_classes_follow_peft_conventions(tmp_path):
    plan = build_plan(load_spec(SPECS[0]))
    files = render_method(plan, layout=Layout.STANDALONE)
    layer = ast.parse(files["reflora/layer.py"])
    classes = {node.name: node for node in layer.body if isinstance(node, ast.ClassDef)}
    assert set(classes) == {"RefLoraLayer", "Linear", "Embedding", "_ConvNd", "Conv1d", "Conv2d"}
    assert [ast.unparse(b) for b in classes["Conv2d"].bases] == ["_ConvNd"]
    assert [ast.unparse(b) for b in classes["Linear"].bases] == ["nn.Module", "RefLoraLayer"]
    base_methods = {n.name for n in classes["RefLoraLayer"].body if isinstance(n, ast.FunctionDef)}
    assert {"update_layer", "get_delta_weight", "merge", "unmerge", "forward", "_mixed_batch_forward"} <= base_methods
    attrs = {
        t.target.id: ast.literal_eval(t.value)
        for t in classes["RefLoraLayer"].body
        if isinstance(t, ast.AnnAssign) and isinstance(t.target, ast.Name)
    }
    assert attrs["adapter_layer_names"] == ("reflora_lora_A", "reflora_lora_B")
    assert attrs["other_param_names"] == ("reflora_scaling", "reflora_dropout")

    model = ast.parse(files["reflora/model.py"])
    (model_cls,) = [n for n in model.body if isinstance(n, ast.ClassDef)]
    assigned = {t.target.id: t for t in model_cls.body if isinstance(t, ast.AnnAssign)}
    assert ast.literal_eval(assigned["prefix"].value) == "reflora_"
    assert "raise TypeError" in ast.unparse(model_cls)

    init = files["reflora/__init__.py"]
    assert 'register_peft_method(name="reflora", config_cls=RefLoraConfig, model_cls=RefLoraModel' in init

    config = ast.parse(files["reflora/config.py"])
    fields = [n.target.id for n in ast.walk(config) if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    for name in ("target_modules", "r", "lora_alpha", "lora_dropout", "use_rslora", "init_weights", "fan_in_fan_out"):
        assert name in fields


def test_bounds_become_post_init_checks():
    plan = build_plan(load_spec(SPECS[0]))
    config = render_method(plan, layout=Layout.STANDALONE)["reflora/config.py"]
    assert "if self.r < 1:" in config
    assert "if self.lora_dropout < 0.0:" in config and "if self.lora_dropout > 1.0:" in config


def test_rerun_is_idempotent_and_different_content_needs_force(tmp_path):
    spec = SPECS[0]
    assert runner.invoke(app, ["new", str(spec), "--out", str(tmp_path)]).exit_code == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    again = runner.invoke(app, ["new", str(spec), "--out", str(tmp_path), "--json"])
    assert again.exit_code == 0
    assert json.loads(again.stdout)["up_to_date"] is True
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before

    data = yaml.safe_load(spec.read_text())
    data["hyperparameters"]["r"]["default"] = 16
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    refused = runner.invoke(app, ["new", str(changed), "--out", str(tmp_path)])
    assert refused.exit_code == 2
    assert "--force" in refused.output
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p != changed} == before
    forced = runner.invoke(app, ["new", str(changed), "--out", str(tmp_path), "--force"])
    assert forced.exit_code == 0
    assert "default=16" in (tmp_path / "reflora" / "config.py").read_text()


def test_dry_run_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["new", str(SPECS[0]), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0
    assert "+++ b/reflora/layer.py" in result.output
    assert not out.exists()


def test_generation_path_imports_neither_torch_nor_peft(tmp_path):
    code = f"""
import sys
from scaffold.cli import app
from typer.testing import CliRunner
result = CliRunner().invoke(app, ["new", {str(SPECS[0])!r}, "--out", {str(tmp_path)!r}])
assert result.exit_code == 0, result.output
print(sorted(m for m in ("torch", "peft", "transformers") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.strip() == "[]"


def test_check_json_summary():
    result = runner.invoke(app, ["check", str(SPECS[0]), "--json"])
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["peft_type"] == "REFLORA"
    assert summary["weights"]["lora_A"]["shape"] == ["config.r", "self.in_features"]
    assert "src/peft/tuners/reflora/layer.py" in summary["files"]


def test_schema_is_json_schema_of_the_spec():
    result = runner.invoke(app, ["schema"])
    schema = json.loads(result.stdout)
    assert schema["title"] == "MethodSpec"
    assert {"name", "weights"} <= set(schema["required"])
    # optional for a method that only updates the bias, or one that cannot be merged (cross-field rules)
    assert "delta_weight" in schema["properties"] and schema["properties"]["mergeable"]["default"] is True


@pytest.mark.parametrize("like", ["lora", "blank"])
def test_init_writes_a_valid_starter(tmp_path, like):
    target = tmp_path / "mine.yaml"
    result = runner.invoke(app, ["init", "mymethod", "--like", like, "-o", str(target)])
    assert result.exit_code == 0, result.output
    spec = load_spec(target)
    assert spec.name == "mymethod"
    build_plan(spec)


def test_custom_target_modules_are_rendered_into_model():
    data = yaml.safe_load(SPECS[0].read_text())
    data["target_modules"] = {"llama": ["q_proj", "v_proj"]}
    plan = build_plan(spec_from_data(data))
    model = render_method(plan, layout=Layout.STANDALONE)["reflora/model.py"]
    assert '{"llama": ["q_proj", "v_proj"]}' in model
    assert "TRANSFORMERS_MODELS_TO_LORA" not in model
