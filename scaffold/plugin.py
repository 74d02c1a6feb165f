"""`new SPEC --plugin OUTDIR`: the method as a pip-installable package for stock PEFT from PyPI.

    spec -> plan -> the tuner's files (the standalone rendering, with the plugin's import lines)
         + templates/plugin/ (cookiecutter: pyproject.toml, README, LICENSE, `_registration.py`, its tests)
         -> OUTDIR/peft-<name>/, staged as one change set

Importing the package runs `_registration.py`, which adds the method to the installed PEFT (the `PeftType`
member, `register_peft_method`, the target-module mapping) after checking that PEFT's version is one the
package declares and was tested with (`PEFT_REQUIREMENT`; tests/test_plugin_install.py runs each).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from scaffold.changeset import ChangeSet
from scaffold.errors import ScaffoldError
from scaffold.plan import MethodPlan
from scaffold.render.files import Layout, header_year, render_files
from scaffold.render.format import format_sources, ruff_config
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


def distribution_name(name: str) -> str:
    return "peft-" + name.replace("_", "-")


def package_name(name: str) -> str:
    return f"peft_{name}"


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
    if kind.name != "tuner":
        raise ScaffoldError(
            f"{spec_path}: kind",
            f"--plugin packages `kind: tuner` specs only; for `{kind.name}`, `new --out DIR` writes a module for "
            "stock PEFT (see docs/plugin.md)",
        )
    plan: MethodPlan = kind.plan(spec, str(spec_path), None)
    dist, package = distribution_name(plan.name), package_name(plan.name)
    check_name_is_free(dist, package, where=f"{spec_path}: name")
    if out_dir.exists() and not out_dir.is_dir():
        raise ScaffoldError(str(out_dir), "exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ScaffoldError(str(out_dir), f"exists and is not empty; pass --force to replace {dist}/ in it")

    changeset = ChangeSet(out_dir)
    # the tuner kind's own templates and variables for `--out`, with the plugin's import lines and licence
    paths = {template: _in_package(plan, out) for template, out in kind.templates(plan, Layout.STANDALONE).items()}
    holder = f"the {dist} authors"
    context = {
        **kind.context(plan, Layout.STANDALONE),
        "p": plan,
        "spec_file": spec_path.name,
        "layout": Layout.STANDALONE.value,
        "package_import": package,
        "public_import": package,
        "registration_module": "._registration",
        "copyright_holder": holder,
        "license": spec.license,
    }
    files = render_files(paths, context, read_existing=changeset.read, first_party=(package,), templates=templates)
    year = header_year(files[f"{dist}/src/{package}/__init__.py"])  # as render_files chose it
    assert year is not None
    files.update(_package_files(plan, spec_file=spec_path.name, license=spec.license, holder=holder, year=year))

    source = out_dir / dist / "src" / package
    if source.is_dir():  # --force: a module an earlier generation had and this one has not would still be imported
        for path in sorted(source.rglob("*.py")):
            rel = path.relative_to(out_dir).as_posix()
            if "__pycache__" not in path.parts and rel not in files:
                changeset.delete(rel)
    for relpath, text in sorted(files.items()):
        changeset.write(relpath, text)
    notes = [
        f"install: pip install {out_dir / dist}",
        f"use: import {package} (adds PeftType.{plan.peft_type} to peft{PEFT_REQUIREMENT}), then {plan.config_cls}",
    ]
    headline = f"{dist}, package {package}"
    return Generation(kind.name, plan.name, plan.title, headline, changeset, plan, files, paths, notes)


def _in_package(plan: MethodPlan, relpath: str) -> str:
    """A standalone output path (`<name>/x.py`, `tests/...`, `examples/...`) in the plugin's src layout."""
    top, _, rest = relpath.partition("/")
    dist, package = distribution_name(plan.name), package_name(plan.name)
    return f"{dist}/src/{package}/{rest}" if top == plan.name else f"{dist}/{relpath}"


def _package_files(plan: MethodPlan, *, spec_file: str, license: str, holder: str, year: int) -> dict[str, str]:
    """The packaging around the adapter code (templates/plugin/, cookiecutter), keyed by path relative to OUTDIR."""
    dist, package = distribution_name(plan.name), package_name(plan.name)
    header = (
        environment()
        .get_template("_header.j2")
        .render(year=year, spec_file=spec_file, copyright_holder=holder, license=license)
    )
    context = {
        "name": plan.name,
        "dist_name": dist,
        "package": package,
        "title": plan.title,
        "summary": textwrap.fill(" ".join(plan.spec.summary.split()), 115),
        "peft_type": plan.peft_type,
        "config_cls": plan.config_cls,
        "model_cls": plan.model_cls,
        "layer_cls": plan.layer_cls,
        "prefix": plan.prefix,
        "license": license,
        "copyright_holder": holder,
        "year": str(year),
        "header": header.rstrip("\n"),
        "spec_file": spec_file,
        "peft_requirement": PEFT_REQUIREMENT,
        "peft_min": PEFT_MIN,
        "peft_max": PEFT_BELOW,
        "peft_tested": ", ".join(PEFT_TESTED),
        "peft_too_old": PEFT_TOO_OLD,
        "llama_targets": json.dumps(_llama_targets(plan)).replace("null", "None"),  # a Python literal
        "example_file": f"{plan.name}_example.py",
        "ruff_version": importlib.metadata.version("ruff"),  # the one that formatted the code
        **_usage_layer(plan),
    }
    files = _cookiecutter(context)
    files.update(format_sources({k: v for k, v in files.items() if k.endswith(".py")}, first_party=(package,)))
    files["ruff.toml"] = f"# PEFT's own ruff settings, with this package first-party\n{ruff_config((package,))}"
    return {f"{dist}/{relpath}": text for relpath, text in files.items()}


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
        return {
            path.relative_to(project).as_posix(): path.read_text(encoding="utf-8")
            for path in sorted(project.rglob("*"))
            if path.is_file()
        }


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
