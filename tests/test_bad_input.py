"""Bad input never gets a traceback: a bad spec (or a bad command line) is one line naming the field and the reason,
exit code 2, and nothing is written, neither into `--out DIR` nor into a PEFT tree."""

from __future__ import annotations

import ast
import copy
import datetime
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.peft_source import copy_peft_tree
from tests.conftest import snapshot_tree


REPO = Path(__file__).resolve().parent.parent
REFERENCE_SPEC = REPO / "reference_methods" / "lora.yaml"
REFERENCE: dict[str, Any] = yaml.safe_load(REFERENCE_SPEC.read_text(encoding="utf-8"))
runner = CliRunner()


# -- mutations of the reference LoRA spec ---------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting the dotted `path` (created as needed) to `value`."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            data = data.setdefault(part, {})
        data[last] = copy.deepcopy(value)

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            data = data[part]
        del data[last]

    return mutate


def _all(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(data)

    return mutate


def _delta(expression: str) -> Callable[[dict[str, Any]], None]:
    return _set("delta_weight", expression)


# (id, mutation of the reference spec, text the error must contain: the field it names)
SPEC_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    # structure
    ("missing-weights", _delete("weights"), "weights"),
    ("missing-delta_weight", _delete("delta_weight"), "delta_weight"),
    ("missing-name", _delete("name"), "name"),
    ("empty-weights", _set("weights", {}), "weights"),
    ("unknown-top-level-field", _set("colour", "red"), "colour"),
    ("unknown-hyperparameter-field", _set("hyperparameters.r.maximum", 3), "hyperparameters.r.maximum"),
    ("unknown-weight-field", _set("weights.lora_A.dtype", "float16"), "weights.lora_A.dtype"),
    # wrong types
    ("default-wrong-type", _set("hyperparameters.r.default", "eight"), "hyperparameters.r.default"),
    ("default-bool-for-int", _set("hyperparameters.r.default", True), "hyperparameters.r.default"),
    ("hyperparameter-type-unknown", _set("hyperparameters.r.type", "integer"), "hyperparameters.r.type"),
    ("hyperparameter-not-a-mapping", _set("hyperparameters.r", 8), "hyperparameters.r"),
    ("layers-a-string", _set("layers", "Linear"), "layers"),
    ("layers-unknown-type", _set("layers", ["Linear", "Conv4d"]), "layers[1]"),
    ("layers-duplicated", _set("layers", ["Linear", "Linear"]), "layers"),
    ("shape-an-int", _set("weights.lora_A.shape", 5), "weights.lora_A.shape"),
    ("shape-an-int-uppercase-weight", _set("weights.A", {"shape": 5, "init": "zeros"}), "weights.A.shape"),
    ("shape-entry-a-list", _set("weights.lora_A.shape", ["r", [1]]), "weights.lora_A.shape[1]"),
    ("shape-entry-fractional", _set("weights.lora_A.shape", ["r", 1.5]), "weights.lora_A.shape[1]"),
    ("shape-too-many-dims", _set("weights.lora_A.shape", [1, 1, 1, 1, 1]), "weights.lora_A.shape"),
    ("shape-zero", _set("weights.lora_A.shape", [0, "in_features"]), "weights.lora_A.shape[0]"),
    ("shape-negative", _set("weights.lora_A.shape", ["r", -3]), "weights.lora_A.shape[1]"),
    ("name-an-int", _set("name", 5), "name"),
    ("name-null", _set("name", None), "name"),
    ("delta_weight-a-list", _set("delta_weight", ["lora_B", "lora_A"]), "delta_weight"),
    ("target_modules-a-number", _set("target_modules", 3), "target_modules"),
    ("target_modules-names-not-a-list", _set("target_modules", {"llama": "q_proj"}), "target_modules.llama"),
    ("derived-a-list", _set("derived.scaling", [1]), "derived.scaling"),
    ("init-argument-a-list", _set("weights.lora_A.init", {"name": "normal", "std": [1]}), "weights.lora_A.init.std"),
    ("hyperparameter-key-an-int", _set("hyperparameters", {3: {"type": "int", "default": 1}}), "hyperparameters.3"),
    ("class_prefix-not-camel", _set("class_prefix", "my-prefix"), "class_prefix"),
    # out-of-range and inconsistent values
    ("default-below-min", _set("hyperparameters.r.default", 0), "hyperparameters.r.default"),
    ("default-above-max", _set("hyperparameters.lora_dropout.default", 1.5), "hyperparameters.lora_dropout.default"),
    ("default-null-not-nullable", _set("hyperparameters.r.default", None), "hyperparameters.r.default"),
    ("bounds-on-bool", _set("hyperparameters.use_rslora.min", 0), "hyperparameters.use_rslora.min"),
    ("enum-without-choices", _set("hyperparameters.mode", {"type": "enum", "default": "a"}), "hyperparameters.mode"),
    (
        "enum-default-not-a-choice",
        _set("hyperparameters.mode", {"type": "enum", "choices": ["a"], "default": "b"}),
        "hyperparameters.mode.default",
    ),
    ("list-without-item", _set("hyperparameters.ids", {"type": "list"}), "hyperparameters.ids"),
    # shared weights: frozen, one init from the key, sized from layer dims only, never all of them
    (
        "shared-init_by_layer",
        _set("weights.lora_A.shared", True),
        "weights.lora_A.init_by_layer",
    ),
    (
        "shared-trainable-and-frozen",
        _all(
            _set(
                "weights.lora_B", {"shape": ["out_features", "r"], "init": "zeros", "shared": True, "trainable": True}
            ),
            _set("weights.P", {"shape": ["r", "in_features"], "init": "ones", "shared": True}),
        ),
        "weights.P.trainable",
    ),
    (
        "shared-trainable-random_init",
        _set(
            "weights.lora_B",
            {
                "shape": ["out_features", "r"],
                "init": "zeros",
                "shared": True,
                "trainable": True,
                "random_init": "ones",
            },
        ),
        "weights.lora_B.random_init",
    ),
    (
        "shared-random_init",
        _set(
            "weights.lora_B", {"shape": ["out_features", "r"], "init": "zeros", "shared": True, "random_init": "ones"}
        ),
        "weights.lora_B.random_init",
    ),
    (
        "shared-shape-derived",
        _set("weights.lora_B", {"shape": ["out_features", "scaling"], "init": "zeros", "shared": True}),
        "weights.lora_B.shape[1]",
    ),
    (
        "shared-shape-conv-dim",
        _all(
            _set("layers", ["Conv2d"]),
            _set("weights.lora_B", {"shape": ["out_channels", "r"], "init": "zeros", "shared": True}),
        ),
        "weights.lora_B.shape[0]",
    ),
    (
        "shared-init-expression",
        _set(
            "weights.lora_B",
            {"shape": ["out_features", "r"], "init": {"expr": "torch.zeros(out_features, r)"}, "shared": True},
        ),
        "weights.lora_B.init",
    ),
    (
        "shared-every-weight",
        _all(
            _set("weights.lora_A", {"shape": ["r", "in_features"], "init": "zeros", "shared": True}),
            _set("weights.lora_B", {"shape": ["out_features", "r"], "init": "zeros", "shared": True}),
        ),
        "weights.lora_A.shared",
    ),
    (
        "shared-config-field-taken",
        _all(
            _set("weights.lora_B", {"shape": ["out_features", "r"], "init": "zeros", "shared": True}),
            _set("hyperparameters.save_projection", {"type": "bool", "default": True}),
        ),
        "hyperparameters.save_projection",
    ),
    ("merge-without-unmerge", _set("merge", "weight + delta_weight"), "merge"),
    ("bound-infinite", _set("hyperparameters.r.max", float("inf")), "hyperparameters.r.max"),
    ("default-nan", _set("hyperparameters.lora_alpha.default", float("nan")), "hyperparameters.lora_alpha.default"),
    (
        "list-default-with-inf",
        _set("hyperparameters.ids", {"type": "list", "item": "float", "default": [1.0, -float("inf")]}),
        "hyperparameters.ids.default",
    ),
    (
        "peft_test_kwargs-unknown-hyperparameter",
        _set("peft_test_kwargs", {"Linear": {"rank": 2}}),
        "peft_test_kwargs.Linear",
    ),
    ("peft_test_kwargs-wrong-type", _set("peft_test_kwargs", {"Linear": {"r": "eight"}}), "peft_test_kwargs.Linear.r"),
    (
        "peft_test_kwargs-a-date",
        _set("peft_test_kwargs", {"Linear": {"r": datetime.date(2020, 1, 1)}}),
        "peft_test_kwargs.Linear.r",
    ),
    ("peft_test_kwargs-bytes", _set("peft_test_kwargs", {"Linear": {"r": b"\x00"}}), "peft_test_kwargs.Linear.r"),
    ("peft_test_kwargs-layer-unknown", _set("peft_test_kwargs", {"Conv4d": {"r": 2}}), "peft_test_kwargs.Conv4d"),
    # free text is copied into generated docstrings and string literals
    ("title-with-quote", _set("title", 'My "LoRA"'), "title"),
    ("title-with-braces", _set("title", "My {LoRA}"), "title"),
    ("title-multi-line", _set("title", "My\nLoRA"), "title"),
    ("summary-with-triple-quotes", _set("summary", 'Ends here """ or not'), "summary"),
    ("summary-with-backslash", _set("summary", "A \\N{BULLET} list"), "summary"),
    ("paper-multi-line", _set("paper", "https://a\nhttps://b"), "paper"),
    ("help-with-triple-quotes", _set("hyperparameters.r.help", '"""'), "hyperparameters.r.help"),
    ("help-with-control-character", _set("hyperparameters.r.help", "rank\x00"), "hyperparameters.r.help"),
    (
        "choice-with-quote",
        _set("hyperparameters.mode", {"type": "enum", "choices": ["it's"], "default": "it's"}),
        "hyperparameters.mode.choices",
    ),
    (
        "choice-with-braces",
        _set("hyperparameters.mode", {"type": "enum", "choices": ["{a}"], "default": "{a}"}),
        "hyperparameters.mode.choices",
    ),
    (
        "str-default-with-triple-quotes",
        _set("hyperparameters.tag", {"type": "str", "default": '"""'}),
        "hyperparameters.tag.default",
    ),
    ("unknown-field-named-with-newline", _set("hyperparameters.r.a\nb", 1), "hyperparameters.r.'a\\nb'"),
    ("unknown-field-named-empty", _set("hyperparameters.r.", 1), "hyperparameters.r.''"),
    # names
    ("name-keyword", _set("name", "class"), "name"),
    ("name-soft-keyword", _set("name", "match"), "name"),
    ("name-with-dash", _set("name", "my-lora"), "name"),
    ("name-leading-digit", _set("name", "1lora"), "name"),
    ("name-with-slash", _set("name", "a/b"), "name"),
    ("name-with-backslash", _set("name", "a\\b"), "name"),
    ("name-dotdot", _set("name", ".."), "name"),
    ("name-uppercase", _set("name", "MyLora"), "name"),
    ("name-trailing-underscore", _set("name", "mylora_"), "name"),
    ("name-empty", _set("name", ""), "name"),
    ("name-rich-markup", _set("name", "[/x]"), "name: '[/x]'"),
    ("name-rich-markup-tag", _set("name", "[bold]x"), "name: '[bold]x'"),
    ("name-collides-lora", _set("name", "lora"), "name"),
    ("name-collides-vera", _set("name", "vera"), "name"),
    ("hyperparameter-name-keyword", _set("hyperparameters.lambda", {"type": "int", "default": 1}), "hyperparameters"),
    ("hyperparameter-name-reserved", _set("hyperparameters.x", {"type": "int", "default": 1}), "hyperparameters"),
    (
        "hyperparameter-name-config-field",
        _set("hyperparameters.target_modules", {"type": "int", "default": 1}),
        "hyperparameters",
    ),
    ("weight-name-not-identifier", _set("weights.lora-C", {"shape": ["r"], "init": "zeros"}), "weights"),
    ("name-used-twice", _set("derived.r", "2"), "r"),
    # expressions
    ("expr-unknown-name", _delta("lora_C @ lora_A * scaling"), "delta_weight"),
    ("expr-dunder-import", _delta("__import__('os')"), "delta_weight"),
    ("expr-import-statement", _delta("import os"), "delta_weight"),
    ("expr-dunder-attribute", _delta("lora_A.__class__"), "delta_weight"),
    ("expr-private-attribute", _delta("lora_A._foo"), "delta_weight"),
    ("expr-lambda", _delta("(lambda: lora_A)()"), "delta_weight"),
    ("expr-bare-lambda", _delta("lambda: 0"), "delta_weight"),
    ("expr-assignment", _delta("x = 1"), "delta_weight"),
    ("expr-walrus", _delta("(y := lora_A)"), "delta_weight"),
    ("expr-two-statements", _delta("lora_A; lora_B"), "delta_weight"),
    ("expr-comprehension", _delta("[a for a in lora_A]"), "delta_weight"),
    ("expr-fstring", _delta("f'{lora_A}'"), "delta_weight"),
    ("expr-eval", _delta("eval('1')"), "delta_weight"),
    ("expr-open", _delta("open('/etc/passwd')"), "delta_weight"),
    ("expr-torch-load", _delta("torch.load('weights.pt')"), "delta_weight"),
    ("expr-torch-save", _delta("torch.save(lora_A, 'x.pt')"), "delta_weight"),
    ("expr-torch-save-value", _delta("torch.save"), "delta_weight"),
    ("expr-torch-disallowed", _delta("torch.randn(3, 3)"), "delta_weight"),
    ("expr-torch-submodule", _delta("torch.nn.Parameter(lora_A)"), "delta_weight"),
    ("expr-tensor-method-disallowed", _delta("lora_A.numpy()"), "delta_weight"),
    ("expr-kwargs", _delta("torch.sum(lora_A, **{'dim': 0})"), "delta_weight"),
    ("expr-syntax-error", _delta("lora_B @"), "delta_weight"),
    ("expr-empty", _delta("   "), "delta_weight"),
    ("expr-only-a-comment", _delta("# lora_B @ lora_A"), "delta_weight"),
    ("expr-in-derived", _set("derived.scaling", "__import__('os').getcwd()"), "derived.scaling"),
    ("expr-derived-tensor-op", _set("derived.scaling", "lora_A @ lora_B"), "derived.scaling"),
    ("expr-derived-forward-reference", _set("derived", {"first": "second", "second": "1.0"}), "derived.first"),
    ("expr-in-forward", _set("forward.Linear", "eval('x')"), "forward.Linear"),
    ("expr-forward-unknown-function", _set("forward.Linear", "dropout2(x)"), "forward.Linear"),
    (
        "expr-in-merge",
        _all(_set("merge", "weight + lora_A.__dict__"), _set("unmerge", "weight - delta_weight")),
        "merge",
    ),
    ("merge-ignores-weight", _all(_set("merge", "delta_weight"), _set("unmerge", "weight - delta_weight")), "merge"),
    (
        "expr-in-init-argument",
        _set("weights.lora_B.random_init", {"name": "normal", "std": "open('x')"}),
        "weights.lora_B.random_init.std",
    ),
    ("expr-in-shape", _set("weights.lora_A.shape", ["r", "in_features.__class__"]), "weights.lora_A.shape[1]"),
    # shapes
    ("shape-unknown-dim", _set("weights.lora_A.shape", ["r", "foo"]), "weights.lora_A.shape[1]"),
    (
        "shape-dim-not-in-every-layer",
        _all(_set("layers", ["Linear", "Embedding"]), _set("weights.lora_A.shape", ["r", "num_embeddings"])),
        "weights.lora_A.shape[1]",
    ),
    # forward, dropout, init
    (
        "forward-layer-not-listed",
        _all(_set("layers", ["Linear"]), _set("forward.Conv2d", "layer_op(x, delta_weight)")),
        "forward.Conv2d",
    ),
    ("forward-key-unknown", _set("forward.Conv4d", "layer_op(x, delta_weight)"), "forward.Conv4d"),
    ("forward-key-conv1D", _set("forward.Conv1D", "layer_op(x, delta_weight)"), "forward.Conv1D"),
    ("dropout-not-float", _set("dropout", "r"), "dropout"),
    ("dropout-unknown", _set("dropout", "nope"), "dropout"),
    ("dropout-multi-line", _set("dropout", "lora\ndropout"), "dropout"),
    ("init-unknown", _set("weights.lora_A.init", "glorot"), "weights.lora_A.init"),
    ("init-call-unknown", _set("weights.lora_A.init", {"name": "glorot"}), "weights.lora_A.init"),
    ("init-kaiming-on-1d", _set("weights.vec", {"shape": ["r"], "init": "kaiming_uniform"}), "weights.vec.init"),
    (
        "random-init-xavier-on-1d",
        _set("weights.vec", {"shape": ["r"], "init": "zeros", "random_init": "xavier_normal"}),
        "weights.vec.random_init",
    ),
    ("init-extra-argument", _set("weights.lora_B.init", {"name": "zeros", "std": 1.0}), "weights.lora_B.init"),
    ("init-constant-without-value", _set("weights.lora_B.init", {"name": "constant"}), "weights.lora_B.init"),
    # init expressions and index buffers (issue #10)
    (
        "init-expr-unknown-name",
        _set("weights.wn", {"shape": ["in_features"], "init": {"expr": "torch.norm(W0)"}, "trainable": False}),
        "weights.wn.init.expr",
    ),
    (
        "init-expr-reads-a-weight",
        _set("weights.wn", {"shape": ["r"], "init": {"expr": "lora_A.sum(1)"}, "trainable": False}),
        "weights.wn.init.expr",
    ),
    (
        "init-expr-unsafe-call",
        _set("weights.wn", {"shape": ["r"], "init": {"expr": "torch.load('x')"}, "trainable": False}),
        "weights.wn.init.expr",
    ),
    (
        "randperm-outside-init",
        _delta("lora_B @ lora_A * scaling + randperm(4, seed=1)[0]"),
        "delta_weight",
    ),
    (
        "randperm-without-seed",
        _set("weights.idx", {"shape": ["r"], "dtype": "long", "init": {"expr": "randperm(r)"}, "trainable": False}),
        "weights.idx.init.expr",
    ),
    (
        "init-expr-with-random-init",
        _set("weights.wn", {"shape": ["r"], "init": {"expr": "torch.ones(r)"}, "random_init": "zeros"}),
        "weights.wn.random_init",
    ),
    (
        "long-trainable",
        _set("weights.idx", {"shape": ["r"], "dtype": "long", "init": {"expr": "torch.ones(r)"}}),
        "weights.idx.dtype",
    ),
    (
        "long-with-an-initialiser",
        _set("weights.idx", {"shape": ["r"], "dtype": "long", "init": "zeros", "trainable": False}),
        "weights.idx.dtype",
    ),
    ("dtype-unknown", _set("weights.lora_A.dtype", "int8"), "weights.lora_A.dtype"),
    ("not-persistent-parameter", _set("weights.lora_A.persistent", False), "weights.lora_A.persistent"),
    (
        "first-weight-long",
        _all(
            _set(
                "weights",
                {
                    "idx": {
                        "shape": ["r"],
                        "dtype": "long",
                        "init": {"expr": "randperm(r, seed=0)"},
                        "trainable": False,
                    },
                    "v": {"shape": ["out_features", "in_features"], "init": "zeros"},
                },
            ),
            _delta("v"),
        ),
        "weights.idx.dtype",
    ),
    ("fft-unknown", _delta("torch.fft.hfft(lora_B @ lora_A).real"), "delta_weight"),
]

# (id, raw file text or None for a missing file, text the error must contain)
FILE_CASES: list[tuple[str, str | None, str]] = [
    ("invalid-yaml", "name: reflora\nweights: [unclosed\n", "invalid YAML"),
    ("yaml-tab-indent", "name: reflora\nweights:\n\tlora_A: 1\n", "invalid YAML"),
    ("empty-file", "", "mapping"),
    ("only-a-comment", "# nothing here\n", "mapping"),
    ("yaml-list", "- name: reflora\n- weights: {}\n", "mapping"),
    ("yaml-scalar", "reflora\n", "mapping"),
    ("not-utf8", "name: r\xe9flora\n", "cannot read"),
    ("nonexistent-path", None, "not found"),
]


def _write_spec(directory: Path, data: Any) -> Path:
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def shared_tree(peft_sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str, int]]]:
    """One PEFT tree for the whole module, and its snapshot: every test checks it is still byte-identical."""
    root = copy_peft_tree(peft_sdist, tmp_path_factory.mktemp("bad-input") / "peft")
    return root, snapshot_tree(root)


def _assert_one_line_error(result: Any, field: str) -> None:
    output = result.output
    assert "Traceback" not in output and "internal error" not in output, output
    assert result.exit_code == 2, (result.exit_code, output)
    assert result.stdout.strip() == "", output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, output
    line = lines[0]
    assert line.startswith("error: "), line
    assert field in line, (field, line)
    reason = line.rsplit(": ", 1)[-1].strip()
    assert len(reason) >= 5, line


def _assert_rejected_everywhere(spec_path: Path, field: str, tmp_path: Path, tree: Path, before: dict) -> None:
    _assert_one_line_error(runner.invoke(app, ["check", str(spec_path)]), field)

    out = tmp_path / "out"
    _assert_one_line_error(runner.invoke(app, ["new", str(spec_path), "--out", str(out)]), field)
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    _assert_one_line_error(runner.invoke(app, ["new", str(spec_path), "--out", str(existing)]), field)
    assert list(existing.iterdir()) == []

    _assert_one_line_error(runner.invoke(app, ["new", str(spec_path), "--peft-root", str(tree)]), field)
    _assert_one_line_error(runner.invoke(app, ["new", str(spec_path), "--peft-root", str(tree), "--dry-run"]), field)
    assert snapshot_tree(tree) == before


@pytest.mark.parametrize("mutate, field", [pytest.param(m, f, id=i) for i, m, f in SPEC_CASES])
def test_bad_spec_is_one_line_exit_2_and_writes_nothing(mutate, field, tmp_path, shared_tree):
    data = copy.deepcopy(REFERENCE)
    mutate(data)
    spec_path = _write_spec(tmp_path, data)
    _assert_rejected_everywhere(spec_path, field, tmp_path, *shared_tree)


@pytest.mark.parametrize("text, reason", [pytest.param(t, r, id=i) for i, t, r in FILE_CASES])
def test_bad_spec_file_is_one_line_exit_2_and_writes_nothing(text, reason, tmp_path, shared_tree):
    spec_path = tmp_path / "spec.yaml"
    if text is not None:
        spec_path.write_bytes(text.encode("latin-1"))
    _assert_rejected_everywhere(spec_path, str(spec_path), tmp_path, *shared_tree)
    result = runner.invoke(app, ["check", str(spec_path)])
    assert reason in result.stderr, result.stderr


def test_text_that_looks_like_console_markup_is_printed_as_is(tmp_path):
    # a valid spec whose title and defaults look like rich markup: printed verbatim, never parsed as markup
    data = copy.deepcopy(REFERENCE)
    data["title"] = "[/x] [bold]LoRA"
    data["hyperparameters"]["tag"] = {"type": "str", "default": "[/b]"}
    spec_path = _write_spec(tmp_path, data)
    checked = runner.invoke(app, ["check", str(spec_path)])
    assert checked.exit_code == 0, checked.output
    shown = " ".join(checked.stdout.split())  # rich wraps at the console width
    assert "[/x] [bold]LoRA" in shown and "[/b]" in shown
    generated = runner.invoke(app, ["new", str(spec_path), "--out", str(tmp_path / "out")])
    assert generated.exit_code == 0, generated.output
    assert "Generated [/x] [bold]LoRA" in " ".join(generated.stdout.split())


def test_reference_spec_itself_is_accepted(tmp_path):
    # the mutations above are of a spec that is valid as it stands
    spec_path = _write_spec(tmp_path, REFERENCE)
    result = runner.invoke(app, ["check", str(spec_path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "mutate, field",
    [
        pytest.param(_set("name", "class"), "name", id="name-keyword"),
        pytest.param(_delta("__import__('os').system('touch pwned')"), "delta_weight", id="expr-import"),
        pytest.param(_set("hyperparameters.r.default", 0), "hyperparameters.r.default", id="default-out-of-range"),
    ],
)
def test_real_stderr_of_the_installed_entry_point(mutate, field, tmp_path):
    """The same through `python -m scaffold`: what a user's terminal gets, with rich's real console."""
    data = copy.deepcopy(REFERENCE)
    mutate(data)
    spec_path = _write_spec(tmp_path, data)
    out = tmp_path / "out"
    for args in (["check", str(spec_path)], ["new", str(spec_path), "--out", str(out)]):
        proc = subprocess.run(
            [sys.executable, "-m", "scaffold", *args], capture_output=True, text=True, cwd=REPO, timeout=60,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "COLUMNS": "40"},
        )  # fmt: skip
        assert proc.returncode == 2, proc
        assert proc.stdout == ""
        assert "Traceback" not in proc.stderr
        (line,) = proc.stderr.strip().splitlines()  # one line even on a narrow terminal
        assert line.startswith(f"error: {spec_path}: {field}: "), line
    assert not out.exists()
    assert not (tmp_path / "pwned").exists() and not (REPO / "pwned").exists()


def test_name_taken_in_the_tree_but_unknown_to_the_static_list(peft_tree, tmp_path):
    from tests.conftest import install_fake_method

    registration, _ = install_fake_method(peft_tree)  # a method `mysuper` the static list of PEFT methods lacks
    before = snapshot_tree(peft_tree)
    data = copy.deepcopy(REFERENCE)
    data["name"] = registration.name
    data.pop("class_prefix")
    spec_path = _write_spec(tmp_path, data)
    assert runner.invoke(app, ["check", str(spec_path)]).exit_code == 0  # fine as a spec...
    result = runner.invoke(app, ["new", str(spec_path), "--peft-root", str(peft_tree)])
    _assert_one_line_error(result, f"src/peft/tuners/{registration.name}")  # ...but not in this tree
    assert "already exists" in result.stderr
    assert snapshot_tree(peft_tree) == before


def test_new_into_something_that_is_not_a_peft_tree(tmp_path):
    not_a_tree = tmp_path / "project"
    not_a_tree.mkdir()
    (not_a_tree / "README.md").write_text("hello\n")
    before = snapshot_tree(not_a_tree)
    result = runner.invoke(app, ["new", str(REFERENCE_SPEC), "--peft-root", str(not_a_tree)])
    _assert_one_line_error(result, str(not_a_tree))
    assert snapshot_tree(not_a_tree) == before
    result = runner.invoke(app, ["new", str(REFERENCE_SPEC), "--peft-root", str(tmp_path / "missing")])
    _assert_one_line_error(result, str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()


def test_new_out_that_is_a_file(tmp_path):
    target = tmp_path / "out"
    target.write_text("keep me\n")
    _assert_one_line_error(runner.invoke(app, ["new", str(REFERENCE_SPEC), "--out", str(target)]), str(target))
    assert target.read_text() == "keep me\n"


# -- the command line itself -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["neither", "both"])
def test_new_needs_exactly_one_of_peft_root_and_out(where, tmp_path):
    out, root = tmp_path / "out", tmp_path / "root"
    args = ["new", str(REFERENCE_SPEC)]
    if where == "both":
        args += ["--out", str(out), "--peft-root", str(root)]
    _assert_one_line_error(runner.invoke(app, args), "--peft-root")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["class", "my-lora", "1lora", "a/b", "..", "MyLora", "lora", "vera", "", "[/x]"])
def test_init_refuses_a_bad_name(name, tmp_path):
    target = tmp_path / "spec.yaml"
    for args in (["init", name], ["init", name, "-o", str(target)]):
        result = runner.invoke(app, args)
        _assert_one_line_error(result, "NAME: ")
    assert list(tmp_path.iterdir()) == []


def test_init_does_not_overwrite_without_force(tmp_path):
    target = tmp_path / "spec.yaml"
    target.write_text("my own spec\n")
    result = runner.invoke(app, ["init", "mymethod", "-o", str(target)])
    _assert_one_line_error(result, str(target))
    assert "--force" in result.stderr
    assert target.read_text() == "my own spec\n"
    assert runner.invoke(app, ["init", "mymethod", "-o", str(target), "--force"]).exit_code == 0
    assert target.read_text().startswith("# Starter spec for `mymethod`")


def test_init_unknown_template(tmp_path):
    target = tmp_path / "spec.yaml"
    _assert_one_line_error(runner.invoke(app, ["init", "mymethod", "--like", "nope", "-o", str(target)]), "nope")
    assert not target.exists()


# -- mutated specs, at random ----------------------------------------------------------------------------------------

EXPRESSIONISH = [
    "__import__('os')", "__import__('os').system('touch pwned')", "lambda: 0", "(lambda: 0)()", "x.__class__",
    "lora_A.__class__", "lora_A._foo", "A @", "import os", "x = 1", "open('f')", "eval('1')", "exec('1')",
    "torch.load('f')", "torch.save(lora_A, 'f')", "[a for a in x]", "f'{x}'", "lora_B @ lora_A", "lora_B @ lora_A * 2",
    "r", "2 * r", "sqrt(r)", "in_features", "out_features", "num_embeddings", "kernel_numel", "foo", "weight", "x",
    "dropout(x)", "layer_op(x, delta_weight)", "Linear", "Conv1D", "Embedding", "Conv2d", "Conv4d", "kaiming_uniform",
    "zeros", "normal", "constant", "int", "float", "bool", "str", "enum", "list", "lora", "vera", "class", "a/b", "..",
    "my-lora", "MyLora", "", " ", "# comment", "[/x]", "[bold]", "{", "- a", "'''", '"""', "\\", "\n", "x\ny", "\x00",
    "{{ name }}", "{% raw %}", "${name}", "é", "lora_A; lora_B", "1e309", "-1",
]  # fmt: skip
FIELD_NAMES = [
    "name", "class_prefix", "title", "paper", "summary", "math", "hyperparameters", "derived", "dropout", "weights",
    "delta_weight", "forward", "merge", "unmerge", "layers", "target_modules", "type", "default", "help", "min", "max",
    "gt", "lt", "choices", "item", "nullable", "shape", "init", "random_init", "trainable", "shared", "mean", "std",
    "r", "lora_A", "lora_B", "scaling", "Linear", "Embedding", "init_by_layer",
]  # fmt: skip

_identifiers = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,8}\Z")
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.integers(),
    st.floats(),
    st.sampled_from(EXPRESSIONISH),
    st.sampled_from(FIELD_NAMES),
    _identifiers,
    st.text(max_size=10),
    st.dates(),  # YAML reads an unquoted 2020-01-01 as a date
    st.binary(max_size=3),  # and !!binary as bytes
)
_keys = st.one_of(st.sampled_from(FIELD_NAMES), _identifiers, st.text(max_size=6), st.integers(0, 3))
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=3),
    max_leaves=6,
)


def _slots(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in the spec, at every depth."""
    found: list[tuple[Any, Any]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((node, key))
        found.extend(_slots(child))
    return found


def _containers(node: Any) -> list[Any]:
    found = [node] if isinstance(node, (dict, list)) else []
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        found.extend(_containers(child))
    return found


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(REFERENCE)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["delete", "replace", "replace", "add"]))
        if action == "add":
            container = draw(st.sampled_from(_containers(data)))
            if isinstance(container, dict):
                container[draw(_keys)] = draw(_values)
            else:
                container.insert(draw(st.integers(0, len(container))), draw(_values))
            continue
        slots = _slots(data)
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        if action == "delete":
            del container[key]
        else:
            container[key] = draw(_values)
    return data


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=mutated_specs())
def test_mutated_specs_never_crash_and_write_nothing_when_refused(data, shared_tree):
    tree, pristine = shared_tree
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        spec_path = _write_spec(tmp_path, data)
        out = tmp_path / "out"
        checked = runner.invoke(app, ["check", str(spec_path)])
        generated = runner.invoke(app, ["new", str(spec_path), "--out", str(out)])
        in_tree = runner.invoke(app, ["new", str(spec_path), "--peft-root", str(tree), "--json"])
        for result in (checked, generated, in_tree):
            assert "Traceback" not in result.output and "internal error" not in result.output, result.output
            assert result.exit_code in (0, 2), (result.exit_code, result.output)
            if result.exit_code == 2:
                (line,) = result.stderr.strip().splitlines()
                assert line.startswith(f"error: {spec_path}"), line
                assert result.stdout.strip() == "", result.stdout
        # `new` validates exactly as `check` does before it renders anything, whatever the destination
        assert (checked.exit_code == 2) == (generated.exit_code == 2) == (in_tree.exit_code == 2), (
            checked.output,
            generated.output,
            in_tree.output,
        )
        written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
        if generated.exit_code == 2:
            assert written == []
        else:
            assert any(p.suffix == ".py" for p in written)
            for path in written:
                if path.suffix == ".py":
                    ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            # accepted: the tree got the method; `remove` must take it out again, byte for byte
            name = json.loads(in_tree.stdout)["name"]
            removed = runner.invoke(app, ["remove", name, "--peft-root", str(tree)])
            assert removed.exit_code == 0, removed.output
        # every file of the tree hashed: refused, nothing was written; accepted then removed, nothing is left
        assert snapshot_tree(tree) == pristine
        assert not (tmp_path / "pwned").exists()
