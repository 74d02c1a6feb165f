"""`kind: lora_variant` end to end: spec -> plan -> the variant module -> registration edits, in one change set.

In a PEFT tree:

    src/peft/tuners/lora/<name>.py                       the LoraVariant subclass(es), one per LoRA layer class
    src/peft/tuners/lora/config.py                       + `use_<name>` (see `sites`)
    src/peft/tuners/lora/layer.py                        + `("use_<name>",): <name>.<Variant>` per layer class
    tests/test_custom_models.py                          + TEST_CASES rows with `use_<name>: True`
    src/peft/tuners/lora/.peft-scaffold-<name>.json      the manifest `remove` works from
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaffold import __version__
from scaffold.changeset import ChangeSet
from scaffold.errors import ScaffoldError
from scaffold.extensions.lora_variant import sites
from scaffold.extensions.lora_variant.plan import VariantPlan, build_plan
from scaffold.extensions.lora_variant.spec import LoraVariantSpec
from scaffold.register import _cst
from scaffold.register.manifest import TOOL, changed_files, hash_generated, load_manifest
from scaffold.register.manifest import sha256_text as sha256_text


MANIFEST_FORMAT = 1
KIND = "lora_variant"
LORA_DIR = "src/peft/tuners/lora"

# PEFT's test models (tests/test_custom_models.py) per LoRA layer class: (description, model id, target modules).
_TEST_MODELS: dict[str, list[tuple[str, str, list[str]]]] = {
    "Linear": [
        ("Vanilla MLP 1 LoRA with {title}", "MLP", ["lin0"]),
        ("Vanilla MLP 2 LoRA with {title}", "MLP", ["lin0", "lin1"]),
        ("Embedding + transformers Conv1D 1 LoRA with {title}", "EmbConv1D", ["conv1d"]),
    ],
    "Embedding": [("Embedding + transformers Conv1D 2 LoRA with {title}", "EmbConv1D", ["emb"])],
    "Conv1d": [("Conv1d LoRA with {title}", "Conv1d", ["conv1d"])],
    "Conv2d": [("Conv2d 1 LoRA with {title}", "Conv2d", ["conv2d"])],
    "Conv3d": [("Conv3d 1 LoRA with {title}", "Conv3d", ["conv3d"])],
}


def manifest_path(name: str) -> str:
    return f"{LORA_DIR}/.peft-scaffold-{name}.json"


def module_path(name: str, standalone: bool = False) -> str:
    return f"{name}.py" if standalone else f"{LORA_DIR}/{name}.py"


# ---------------------------------------------------------------------------------------------------------------------
# rendering


def render_module(plan: VariantPlan, *, standalone: bool, spec_file: str, existing: str | None = None) -> str:
    """The variant module. `existing`: a previous generation, whose licence header year is kept."""
    import datetime

    from scaffold.extensions.lora_variant.plan import _doc
    from scaffold.render.files import header_year
    from scaffold.render.format import format_sources
    from scaffold.render.templates import environment

    layer_imports = sorted({*plan.layer_classes, "LoraVariant", *(["LoraLayer"] if plan.uses_constant_cache else [])})
    merge_doc = _doc(plan.spec.merge or "")
    unmerge_doc = _doc(plan.spec.unmerge or "")
    context = {
        "p": plan,
        "spec_file": spec_file,
        "year": header_year(existing) or datetime.date.today().year,
        "layer_module": "peft.tuners.lora.layer" if standalone else ".layer",
        "layer_imports": layer_imports,
        "merge_doc": merge_doc,
        "unmerge_doc": unmerge_doc,
        "forward_docs": {layer: _doc(plan.spec.forward_for(layer)) for layer in plan.layer_classes},
    }
    text = environment().get_template("lora_variant/variant.py.j2").render(**context)
    name = module_path(plan.name, standalone)
    return format_sources({name: text})[name]


def registration_for(plan: VariantPlan) -> sites.VariantRegistration:
    title = plan.title
    rows = []
    descriptions = []
    for layer in plan.layer_classes:
        for description, model_id, targets in _TEST_MODELS[layer]:
            if targets == ["emb"] and "Linear" in plan.layer_classes:
                # as PEFT's "Embedding + transformers Conv1D 3 DoRA": with the embedding alone, a magnitude vector
                # moves too little in test_only_params_are_updated (PEFT raises the learning rate for `use_dora`)
                targets = ["emb", "conv1d"]
            text = description.format(title=title)
            kwargs = {"target_modules": targets, plan.switch: True, **plan.spec.peft_test_kwargs}
            if model_id == "EmbConv1D" and targets == ["conv1d"]:
                kwargs["fan_in_fan_out"] = True
            rows.append(sites.t.literal_row((text, model_id, _cst.Code("LoraConfig"), kwargs)))
            descriptions.append(text)
    if "Linear" in plan.layer_classes:
        # the training-time path: dropout on the input
        text = f"Vanilla MLP 3 LoRA with {title} and dropout"
        kwargs = {
            "target_modules": ["lin0", "lin1"],
            plan.switch: True,
            "lora_dropout": 0.1,
            **plan.spec.peft_test_kwargs,
        }
        rows.append(sites.t.literal_row((text, "MLP", _cst.Code("LoraConfig"), kwargs)))
        descriptions.append(text)
    return sites.VariantRegistration(
        name=plan.name,
        switch=plan.switch,
        field_code=_format_field(sites.field_code(plan.switch, plan.help)),
        doc_entry=sites.doc_entry(plan.switch, plan.help),
        mapping=tuple(plan.mapping_entries.items()),
        test_rows=tuple(rows),
        test_descriptions=tuple(descriptions),
        banner=tuple(sites.t.banner(f"{title} (LoRA variant, use_{plan.name})")),
    )


def _format_field(code: str) -> str:
    """The field formatted by ruff as it would be inside a class body, dedented again."""
    from scaffold.render.format import format_sources

    wrapped = "from dataclasses import dataclass, field\n\n\n@dataclass\nclass C:\n" + "".join(
        f"    {line}" if line.strip() else line for line in code.splitlines(keepends=True)
    )
    formatted = format_sources({"field.py": wrapped})["field.py"]
    body = formatted.split("class C:\n", 1)[1]
    return "".join(line[4:] if line.startswith("    ") else line for line in body.splitlines(keepends=True))


# ---------------------------------------------------------------------------------------------------------------------
# the manifest


@dataclass(frozen=True)
class VariantManifest:
    name: str
    spec_hash: str
    registration: sites.VariantRegistration
    files: dict[str, str]  # generated file -> sha256
    tool_version: str = __version__

    def to_json(self) -> str:
        data = {
            "format": MANIFEST_FORMAT,
            "tool": TOOL,
            "kind": KIND,
            "tool_version": self.tool_version,
            "name": self.name,
            "spec_hash": self.spec_hash,
            "registration": self.registration.to_data(),
            "files": dict(sorted(self.files.items())),
        }
        return json.dumps(data, indent=2) + "\n"


def read_manifest(root: Path | ChangeSet, name: str) -> VariantManifest | None:
    return load_manifest(root, manifest_path(name), _manifest_from_data, kind=KIND, format_version=MANIFEST_FORMAT)


def _manifest_from_data(data: dict[str, Any]) -> VariantManifest:
    return VariantManifest(
        name=data["name"],
        spec_hash=data["spec_hash"],
        registration=sites.VariantRegistration.from_data(data["registration"]),
        files=dict(data["files"]),
        tool_version=data.get("tool_version", ""),
    )


def edited_files(changeset: ChangeSet, manifest: VariantManifest) -> list[str]:
    return changed_files(changeset, manifest.files)


# ---------------------------------------------------------------------------------------------------------------------
# into a tree, and back out


@dataclass
class TreeFacts:
    replays_merged: bool  # LoraLayer._unmerged_base_weight exists (PEFT >= 0.21)
    has_tests: bool


def inspect_tree(changeset: ChangeSet, spec: LoraVariantSpec) -> TreeFacts:
    """Check that the tree can take the variant; raise `ScaffoldError` naming the cause otherwise."""
    layer_source = _require(changeset, sites.LAYER)
    config_source = _require(changeset, sites.CONFIG)
    for layer in spec.layers:
        if sites.mapping_entries(layer_source, layer) is None:
            # reuses the transform's message: no class, or no mapping
            sites.apply_layer(layer_source, _probe_registration(spec, layer))
    manifest = read_manifest(changeset, spec.name)
    if manifest is None:
        if spec.switch in sites.config_fields(config_source):
            raise ScaffoldError(
                sites.CONFIG, f"LoraConfig already has a field `{spec.switch}`; choose another name for the variant"
            )
        module = module_path(spec.name)
        if changeset.exists(module) or (changeset.root / LORA_DIR / spec.name).exists():
            raise ScaffoldError(module, f"already exists; the name {spec.name!r} is taken in peft.tuners.lora")
        for weight in spec.weights:
            attr = f"lora_{spec.name}_{weight}"
            if attr in layer_source:
                raise ScaffoldError(sites.LAYER, f"already uses the attribute name `{attr}`")
    tests = changeset.read(sites.TEST_CUSTOM_MODELS)
    return TreeFacts(
        replays_merged="def _unmerged_base_weight" in layer_source,
        has_tests=tests is not None and changeset.exists("tests/test_config.py"),
    )


def _probe_registration(spec: LoraVariantSpec, layer: str) -> sites.VariantRegistration:
    return sites.VariantRegistration(spec.name, spec.switch, "", "", ((layer, "X"),), (), (), ())


def _require(changeset: ChangeSet, rel: str) -> str:
    text = changeset.read(rel)
    if text is None:
        raise ScaffoldError(rel, "file not found; expected in a PEFT source tree")
    return text


def stage_registration(changeset: ChangeSet, reg: sites.VariantRegistration, has_tests: bool) -> list[str]:
    notes = []
    for site in sites.SITES:
        if site.needs_tests and not has_tests:
            notes.append(f"{site.name} ({site.relpath}): skipped: tree has no tests/")
            continue
        before = _require(changeset, site.relpath)
        after = site.apply(before, reg)
        if after == before:
            notes.append(f"{site.name} ({site.relpath}): already registered")
        else:
            changeset.write(site.relpath, after)
            notes.append(f"{site.name} ({site.relpath}): changed")
    return notes


def stage_unregistration(changeset: ChangeSet, manifest: VariantManifest) -> list[str]:
    notes = []
    for site in reversed(sites.SITES):
        before = changeset.read(site.relpath)
        if before is None:
            notes.append(f"{site.name} ({site.relpath}): not registered")
            continue
        after = site.remove(before, manifest.registration)
        if after == before:
            notes.append(f"{site.name} ({site.relpath}): not registered")
        else:
            changeset.write(site.relpath, after)
            notes.append(f"{site.name} ({site.relpath}): removed")
    for rel in sorted(manifest.files):
        changeset.delete(rel)
    changeset.delete(manifest_path(manifest.name))
    return list(reversed(notes))


def summary_of(plan: VariantPlan) -> dict[str, Any]:
    reg = registration_for(plan)
    return {
        "name": plan.name,
        "kind": "lora_variant",
        "config_field": f"LoraConfig.{plan.switch}",
        "variant_classes": plan.mapping_entries,
        "weights": {
            name: {"attr": f"lora_{plan.name}_{name}", "shape": weight.shape, "trainable": weight.trainable}
            for name, weight in plan.spec.weights.items()
        },
        "values": {v.name: "constant" if v.constant else "computed" for v in plan.values},
        "merge": plan.spec.merge is not None,
        "files": [module_path(plan.name)],
        "edits": [site.relpath for site in sites.SITES],
        "test_rows": list(reg.test_descriptions),
    }


def spec_hash(spec_path: Path) -> str:
    return hashlib.sha256(Path(spec_path).read_bytes()).hexdigest()


def generate_into_tree(spec: LoraVariantSpec, spec_path: Path, peft_root: Path, *, force: bool) -> tuple[Any, ...]:
    from scaffold.register import detect_peft_tree

    detect_peft_tree(peft_root)
    changeset = ChangeSet(peft_root)
    facts = inspect_tree(changeset, spec)
    plan = build_plan(spec, source=str(spec_path), replays_merged=facts.replays_merged)
    existing = changeset.read(module_path(plan.name))
    module = render_module(plan, standalone=False, spec_file=Path(spec_path).name, existing=existing)
    reg = registration_for(plan)

    notes: list[str] = []
    old = read_manifest(changeset, spec.name)
    tests = changeset.read(sites.TEST_CUSTOM_MODELS)
    if tests is not None and facts.has_tests:
        ours = set(old.registration.test_descriptions) if old is not None else set()
        taken = (set(sites.test_case_descriptions(tests)) - ours) & set(reg.test_descriptions)
        if taken:
            raise ScaffoldError(
                sites.TEST_CUSTOM_MODELS,
                f"TEST_CASES already has a row {sorted(taken)[0]!r}; give the variant another `title`",
            )
    if old is not None:
        edited = edited_files(changeset, old)
        if edited and not force:
            raise ScaffoldError(edited[0], "edited since it was generated; use --force to overwrite it")
        # undo the previous generation first: the net change is what differs (nothing when the spec is unchanged)
        stage_unregistration(changeset, old)
    elif existing is not None and existing != module and not force:
        raise ScaffoldError(module_path(plan.name), "exists with different content; pass --force to overwrite")
    changeset.write(module_path(plan.name), module)
    notes += stage_registration(changeset, reg, facts.has_tests)
    manifest = VariantManifest(
        name=plan.name,
        spec_hash=spec_hash(spec_path),
        registration=reg,
        files=hash_generated(changeset, [module_path(plan.name)], changeset.root),
    )
    changeset.write(manifest_path(plan.name), manifest.to_json())
    return plan, changeset, notes


def remove_from_tree(name: str, peft_root: Path, *, force: bool) -> tuple[ChangeSet, list[str]] | None:
    changeset = ChangeSet(peft_root)
    manifest = read_manifest(changeset, name)
    if manifest is None:
        return None
    edited = edited_files(changeset, manifest)
    if edited and not force:
        raise ScaffoldError(edited[0], "edited since it was generated; use --force to remove it anyway")
    return changeset, stage_unregistration(changeset, manifest)
