"""`new SPEC --plugin OUTDIR`: the method as a pip-installable package for stock PEFT from PyPI.

    spec -> plan -> the kind's files (the standalone rendering, with the plugin's import lines)
         + templates/plugin/ (cookiecutter: pyproject.toml, README, LICENSE, `_registration.py`, its tests)
         -> OUTDIR/peft-<name>/ (tuner) or OUTDIR/peft-lora-<name>/ (lora_layer), staged as one change set

Importing the package runs `_registration.py`, after checking that PEFT's version is one the package declares and
was tested with (`PEFT_REQUIREMENT`; tests/test_plugin_install.py runs each). For a tuner it adds the method to the
installed PEFT (the `PeftType` member, `register_peft_method`, the target-module mapping); for a LoRA layer it
maps the base layer type to the layer class in LoRA's custom-module dispatch of every `LoraConfig`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import subprocess
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from scaffold.changeset import ChangeSet
from scaffold.errors import FAILURE, ScaffoldError
from scaffold.plan import MethodPlan
from scaffold.render.files import Layout, header_year, render_files
from scaffold.render.format import format_sources, ruff_binary, ruff_config
from scaffold.render.templates import environment, template_dir


# The PEFT versions a plugin accepts: every minor release in it is tested (tests/test_plugin_install.py).
PEFT_MIN, PEFT_BELOW = "0.19", "0.22"
PEFT_REQUIREMENT = f">={PEFT_MIN},<{PEFT_BELOW}"
PEFT_TESTED = ("0.19.1", "0.20.0", "0.21.2")
PEFT_TOO_OLD = "0.18.1"  # the release before the range, for the plugin's own test of the refusal

# What the README's usage builds when the method adapts none of Llama's layers: a one-layer model and an input.
_USAGE_LAYERS = {
    "Conv1D": ("Conv1D(8, 10)", "torch.randn(4, 10)"),
    "Conv1d": ("torch.nn.Conv1d(3, 8, 3)", "torch.randn(4, 3, 9)"),
    "Conv2d": ("torch.nn.Conv2d(3, 8, 3)", "torch.randn(4, 3, 9, 9)"),
    "Conv3d": ("torch.nn.Conv3d(2, 8, 3)", "torch.randn(4, 2, 5, 5, 5)"),
}


# the kinds a plugin packages; the rest are refused in `generate_plugin`
KINDS = ("tuner", "lora_layer")


def distribution_name(name: str, kind: str = "tuner") -> str:
    """`peft-<name>`; a LoRA layer's is `peft-lora-<name>`, after its module `lora_<name>` (`new --out`)."""
    return "peft-" + ("lora-" if kind == "lora_layer" else "") + name.replace("_", "-")


def package_name(name: str, kind: str = "tuner") -> str:
    return distribution_name(name, kind).replace("-", "_")


def generate_plugin(spec_path: Path, out_dir: Path, *, force: bool = False, templates: Path | None = None) -> Any:
    """Plan `OUTDIR/peft-<name>/` as a change set (a `pipeline.Generation`); nothing is written here."""
    from scaffold.core.generate import Generation
    from scaffold.pipeline import load

    spec_path, out_dir = Path(spec_path), Path(out_dir)
    kind, spec = load(spec_path)
    if kind.name == "lora_variant":
        raise ScaffoldError(
            f"{spec_path}: kind",
            "a lora_variant changes PEFT's own LoraConfig and LoRA layers, which a plugin for stock PEFT cannot do "
            "cleanly; generate it into a PEFT source tree with --peft-root",
        )
    if kind.name not in KINDS:
        raise ScaffoldError(
            f"{spec_path}: kind",
            f"--plugin packages `kind: tuner` and `kind: lora_layer` specs; for `{kind.name}`, `new --out DIR` "
            "writes files for stock PEFT (see docs/plugin.md)",
        )
    plan = kind.plan(spec, str(spec_path), None)
    dist, package = distribution_name(plan.name, kind.name), package_name(plan.name, kind.name)
    license = getattr(spec, "license", "Apache-2.0")  # a lora_layer spec has no `license`: PEFT's
    check_name_is_free(dist, package, where=f"{spec_path}: name")
    if out_dir.exists() and not out_dir.is_dir():
        raise ScaffoldError(str(out_dir), "exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ScaffoldError(str(out_dir), f"exists and is not empty; pass --force to replace {dist}/ in it")

    changeset = ChangeSet(out_dir)
    # the kind's own templates and variables for `--out`, with the plugin's import lines and licence
    paths = {
        template: _in_package(kind.name, plan, out)
        for template, out in kind.templates(plan, Layout.STANDALONE).items()
    }
    holder = f"the {dist} authors"
    context = {
        **kind.context(plan, Layout.STANDALONE),
        "p": plan,
        "spec_file": spec_path.name,
        "layout": Layout.STANDALONE.value,
        "copyright_holder": holder,
        "license": license,
        # the import lines: the only differences from `new --out`
        "package_import": package,
        "public_import": package,
        "registration_module": "._registration",
        "layer_import": f"{package}.layer",
    }
    files = render_files(paths, context, read_existing=changeset.read, first_party=(package,), templates=templates)
    module = next(path for path in sorted(files) if path.startswith(f"{dist}/src/{package}/"))
    year = header_year(files[module])  # as render_files chose it
    assert year is not None
    names = {"dist": dist, "package": package, "spec_file": spec_path.name, "license": license, "holder": holder}
    if kind.name == "lora_layer":
        files.update(_package_files(_lora_layer_context(plan, **names), year=year))
    else:
        files.update(_package_files(_tuner_context(plan, **names), year=year))

    source = out_dir / dist / "src" / package
    if source.is_dir():  # --force: a module an earlier generation had and this one has not would still be imported
        for path in sorted(source.rglob("*.py")):
            rel = path.relative_to(out_dir).as_posix()
            if "__pycache__" not in path.parts and rel not in files:
                changeset.delete(rel)
    for relpath, text in sorted(files.items()):
        changeset.write(relpath, text)
    if kind.name == "lora_layer":
        use = f"use: import {package} (LoRA on {plan.base_path} with peft{PEFT_REQUIREMENT}), then LoraConfig"
    else:
        use = (
            f"use: import {package} (adds PeftType.{plan.peft_type} to peft{PEFT_REQUIREMENT}), then {plan.config_cls}"
        )
    notes = [f"install: pip install {out_dir / dist}", use]
    headline = f"{dist}, package {package}"
    return Generation(kind.name, plan.name, plan.title, headline, changeset, plan, files, paths, notes)


def _in_package(kind: str, plan: Any, relpath: str) -> str:
    """A standalone output path (`<name>/x.py` or a LoRA layer's `lora_<name>.py`, `tests/...`, `examples/...`) in
    the plugin's src layout; the LoRA layer's module becomes `<package>/layer.py`."""
    dist, package = distribution_name(plan.name, kind), package_name(plan.name, kind)
    if kind == "lora_layer" and relpath == f"{plan.standalone_module}.py":
        return f"{dist}/src/{package}/layer.py"
    top, _, rest = relpath.partition("/")
    return f"{dist}/src/{package}/{rest}" if kind == "tuner" and top == plan.name else f"{dist}/{relpath}"


def _package_files(context: dict[str, str], *, year: int) -> dict[str, str]:
    """The packaging around the adapter code (templates/plugin/, cookiecutter), keyed by path relative to OUTDIR."""
    header = (
        environment()
        .get_template("_header.j2")
        .render(
            year=year,
            spec_file=context["spec_file"],
            copyright_holder=context["copyright_holder"],
            license=context["license"],
        )
    )
    context = {
        **context,
        "year": str(year),
        "header": header.rstrip("\n"),
        "peft_requirement": PEFT_REQUIREMENT,
        "peft_min": PEFT_MIN,
        "peft_max": PEFT_BELOW,
        "peft_tested": ", ".join(PEFT_TESTED),
        "peft_too_old": PEFT_TOO_OLD,
        "ruff_version": importlib.metadata.version("ruff"),  # the one that formatted the code
    }
    dist, package = context["dist_name"], context["package"]
    files = _cookiecutter(context)
    files.update(format_sources({k: v for k, v in files.items() if k.endswith(".py")}, first_party=(package,)))
    files["README.md"] = _format_markdown(files["README.md"], first_party=(package,))
    files["ruff.toml"] = f"# PEFT's own ruff settings, with this package first-party\n{ruff_config((package,))}"
    return {f"{dist}/{relpath}": text for relpath, text in files.items()}


def _format_markdown(text: str, *, first_party: tuple[str, ...]) -> str:
    """The README's code blocks formatted as the package's `ruff format .` checks them (the spec's example layer
    and input, printed from its literals, come with single quotes)."""
    with tempfile.TemporaryDirectory(prefix="peft-scaffold-plugin-") as tmp:
        config = Path(tmp) / "ruff.toml"
        config.write_text(ruff_config(first_party))
        proc = subprocess.run(
            [ruff_binary(), "format", "--no-cache", "--config", str(config), "--stdin-filename", "README.md", "-"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        raise ScaffoldError("ruff", f"could not format the plugin's README.md: {proc.stderr.strip()}", FAILURE)
    return proc.stdout


def _common_context(
    plan: Any, *, dist: str, package: str, spec_file: str, license: str, holder: str
) -> dict[str, str]:
    return {
        "name": plan.name,
        "dist_name": dist,
        "package": package,
        "title": plan.title,
        "summary": textwrap.fill(" ".join(plan.spec.summary.split()), 115),
        "license": license,
        "copyright_holder": holder,
        "spec_file": spec_file,
    }


def _lora_layer_context(plan: Any, **names: str) -> dict[str, str]:
    """templates/plugin/'s variables for a `kind: lora_layer` plan (a `LoraLayerPlan`)."""
    return {
        **_common_context(plan, **names),
        "kind": "lora_layer",
        "layer_cls": plan.class_name,
        "base_layer": plan.base_path,
        "base_import": plan.base_import or "",
        "config_cls": "LoraConfig",
        "example_file": f"{plan.standalone_module}_example.py",
        "usage_model": plan.example_layer,
        "usage_input": plan.example_input,
    }


def _tuner_context(plan: MethodPlan, **names: str) -> dict[str, str]:
    """templates/plugin/'s variables for a `kind: tuner` plan."""
    return {
        **_common_context(plan, **names),
        "kind": "tuner",
        "peft_type": plan.peft_type,
        "config_cls": plan.config_cls,
        "model_cls": plan.model_cls,
        "layer_cls": plan.layer_cls,
        "prefix": plan.prefix,
        "llama_targets": json.dumps(_llama_targets(plan)).replace("null", "None"),  # a Python literal
        "mergeable": "true" if plan.mergeable else "false",
        "example_file": f"{plan.name}_example.py",
        **_usage_layer(plan),
    }


def _llama_targets(plan: MethodPlan) -> list[str] | None:
    """Modules of a Llama model the plugin's tests and README adapt, or None when it has no layer of the spec's."""
    if "Linear" in plan.spec.layers:
        return ["q_proj", "v_proj"]
    if "Embedding" in plan.spec.layers:
        return ["embed_tokens"]
    return None


def _usage_layer(plan: MethodPlan) -> dict[str, str]:
    layer = next((t for t in plan.spec.layers if t in _USAGE_LAYERS), None)
    model, example_input = _USAGE_LAYERS[layer] if layer else ("", "")
    if layer == "Conv1D":
        model = f"__import__('transformers').pytorch_utils.{model}"
    return {"usage_model": model, "usage_input": example_input}


def _cookiecutter(context: dict[str, str]) -> dict[str, str]:
    """Render templates/plugin/ with cookiecutter (no prompts, the context from the spec); path -> text."""
    from cookiecutter.main import cookiecutter

    with tempfile.TemporaryDirectory(prefix="peft-scaffold-plugin-") as tmp:
        # cookiecutter keeps a replay of every run and clones under its own directories: keep them in `tmp`
        config = Path(tmp) / "cookiecutter.yaml"
        config.write_text(json.dumps({"replay_dir": f"{tmp}/replay", "cookiecutters_dir": f"{tmp}/templates"}))
        project = Path(
            cookiecutter(
                str(template_dir() / "plugin"),
                no_input=True,
                extra_context=context,
                output_dir=f"{tmp}/out",
                config_file=str(config),
            )
        )
        files = {
            path.relative_to(project).as_posix(): path.read_text(encoding="utf-8")
            for path in sorted(project.rglob("*"))
            if path.is_file()
        }
    # a file only one kind has renders empty for the others (its text is in `{% if cookiecutter.kind == ... %}`)
    return {path: text for path, text in files.items() if text.strip()}


def check_name_is_free(dist: str, package: str, *, where: str) -> None:
    """Refuse a plugin whose import package another installed distribution (or any module on the path) already
    has, in the environment peft-scaffold runs in: installing the plugin would shadow it, or be shadowed by it."""
    found = importlib.util.find_spec(package)
    owners = importlib.metadata.packages_distributions().get(package, []) if found is not None else []
    foreign = sorted({owner for owner in owners if _canonical(owner) != _canonical(dist)})
    if foreign:
        raise ScaffoldError(where, f"`import {package}` is already provided by the installed {', '.join(foreign)}")
    if found is not None and not owners:
        location = found.origin or ", ".join(found.submodule_search_locations or [])
        raise ScaffoldError(where, f"`import {package}` already finds {location}; {dist} would clash with it")
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return
    if not owners:  # installed under the plugin's name, without its package: something else of the same name
        raise ScaffoldError(where, f"a distribution named {dist} is installed and does not provide `{package}`")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
