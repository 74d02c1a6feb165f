"""`new --templates DIR`: files in DIR shadow the built-in templates of the same relative path; the rest fall back
to the built-in ones."""

from __future__ import annotations

import ast
from pathlib import Path

from typer.testing import CliRunner

from scaffold.cli import app
from scaffold.render.templates import template_dir


REPO = Path(__file__).resolve().parent.parent
LORA = REPO / "reference_methods" / "lora.yaml"
DORA = REPO / "reference_methods" / "dora.yaml"
runner = CliRunner()

LAB_HEADER = """\
# Copyright {{ year }} Example Lab. All rights reserved.
# Internal use only. Generated from `{{ spec_file }}`.
"""


def _below_header(text: str) -> str:
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "\n".join(lines)


def _new(spec: Path, out: Path, *extra: str) -> dict[str, str]:
    result = runner.invoke(app, ["new", str(spec), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return {p.relative_to(out).as_posix(): p.read_text() for p in sorted(out.rglob("*.py"))}


def test_a_header_override_applies_to_every_file_of_every_kind(tmp_path: Path):
    overrides = tmp_path / "house"
    overrides.mkdir()
    (overrides / "_header.j2").write_text(LAB_HEADER)
    for spec in (LORA, DORA):
        plain = _new(spec, tmp_path / f"plain-{spec.stem}")
        files = _new(spec, tmp_path / f"house-{spec.stem}", "--templates", str(overrides))
        assert sorted(files) == sorted(plain)
        for rel, text in files.items():
            assert text.startswith("# Copyright "), rel
            assert "Example Lab. All rights reserved." in text.splitlines()[0], rel
            assert f"Generated from `{spec.name}`" in text, rel
            assert "Apache License" not in text and "Apache License" in plain[rel], rel
            ast.parse(text)
            assert _below_header(text) == _below_header(plain[rel]), rel  # the rest is the built-in template's


def test_a_layer_template_override_changes_that_file_only(tmp_path: Path):
    overrides = tmp_path / "house"
    (overrides / "tuner").mkdir(parents=True)
    builtin = (template_dir() / "tuner" / "layer.py.j2").read_text()
    marker = "    # Reviewed against the lab's numerics checklist."
    # the override is the built-in layer template with one more line at the top of the base layer class
    anchor = "class {{ p.layer_cls }}(BaseTunerLayer):\n"
    assert anchor in builtin
    head, tail = builtin.split(anchor, 1)
    docstring_end = tail.index('"""', tail.index('"""') + 3) + 3
    custom = head + anchor + tail[:docstring_end] + "\n\n" + marker + tail[docstring_end:]
    (overrides / "tuner" / "layer.py.j2").write_text(custom)

    plain = _new(LORA, tmp_path / "plain")
    files = _new(LORA, tmp_path / "house", "--templates", str(overrides))
    assert sorted(files) == sorted(plain)
    changed = sorted(rel for rel in files if files[rel] != plain[rel])
    assert changed == ["reflora/layer.py"]
    assert marker in files["reflora/layer.py"] and marker not in plain["reflora/layer.py"]
    ast.parse(files["reflora/layer.py"])


def test_templates_must_be_a_directory(tmp_path: Path):
    result = runner.invoke(app, ["new", str(LORA), "--out", str(tmp_path / "out"), "--templates", str(LORA)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {LORA}: --templates must be a directory of jinja2 templates"
    ]
    assert not (tmp_path / "out").exists()


def test_a_broken_override_is_one_line_naming_the_template(tmp_path: Path):
    overrides = tmp_path / "house"
    overrides.mkdir()
    (overrides / "_header.j2").write_text("# {{ year \n")
    result = runner.invoke(app, ["new", str(LORA), "--out", str(tmp_path / "out"), "--templates", str(overrides)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "_header.j2:1: template syntax error" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_a_layer_macro_override_changes_how_the_variant_spells_it(tmp_path: Path):
    """`kind: lora_variant` writes per-layer-type code with the macros of templates/lora_variant/layers/: an override
    of Linear's `layer_op` changes the Linear variant, and only it."""
    overrides = tmp_path / "house"
    (overrides / "lora_variant" / "layers").mkdir(parents=True)
    builtin = (template_dir() / "lora_variant" / "layers" / "linear.j2").read_text()
    macro = "{% macro layer_op(x, w) %}F.linear({{ x }}, {{ w }}){% endmacro %}"
    assert macro in builtin
    custom = builtin.replace(macro, "{% macro layer_op(x, w) %}torch.matmul({{ x }}, {{ w }}.T){% endmacro %}")
    (overrides / "lora_variant" / "layers" / "linear.j2").write_text(custom)

    plain = _new(DORA, tmp_path / "plain")
    files = _new(DORA, tmp_path / "house", "--templates", str(overrides))
    (rel,) = files
    linear = files[rel].split("class RefDoraLinearVariant", 1)[1].split("\nclass ", 1)[0]
    others = files[rel].split("\nclass RefDoraEmbeddingVariant", 1)[1]
    assert "torch.matmul(" in linear and "F.linear(" not in linear
    assert "F.linear(" in plain[rel].split("class RefDoraLinearVariant", 1)[1].split("\nclass ", 1)[0]
    assert others == plain[rel].split("\nclass RefDoraEmbeddingVariant", 1)[1]
    ast.parse(files[rel])
