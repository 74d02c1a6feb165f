"""`kind: lora_variant`: a LoRA variant (a `LoraVariant` subclass switched on by `LoraConfig.use_<name>`).

See docs/lora_variant.md. The pieces: `spec` (the YAML model), `plan` (expressions checked, code fragments
computed), `templates/lora_variant/variant.py.j2` (the module), `sites` (libcst edits of PEFT's LoRA config, layer
mappings and test matrix, each with its inverse), `generate` (the change set, the manifest, remove).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scaffold.changeset import ChangeSet
from scaffold.errors import ScaffoldError
from scaffold.extensions.lora_variant.spec import LoraVariantSpec


class LoraVariantExtension:
    kind = "lora_variant"
    spec_model = LoraVariantSpec

    def summary(self, spec: Any, source: str) -> dict[str, Any]:
        from scaffold.extensions.lora_variant.generate import summary_of
        from scaffold.extensions.lora_variant.plan import build_plan

        return summary_of(build_plan(spec, source=source))

    def generate_files_only(self, spec: Any, spec_path: Path, out_dir: Path, *, force: bool) -> Any:
        from scaffold.extensions.lora_variant.generate import module_path, render_module
        from scaffold.extensions.lora_variant.plan import build_plan
        from scaffold.pipeline import Generation

        plan = build_plan(spec, source=str(spec_path))
        if out_dir.exists() and not out_dir.is_dir():
            raise ScaffoldError(str(out_dir), "exists and is not a directory")
        changeset = ChangeSet(out_dir)
        rel = module_path(plan.name, standalone=True)
        current = changeset.read(rel)
        text = render_module(plan, standalone=True, spec_file=Path(spec_path).name, existing=current)
        if current is not None and current != text and not force:
            raise ScaffoldError(rel, "exists with different content; pass --force to overwrite")
        changeset.write(rel, text)
        notes = [
            f"registering it in a PEFT tree (`new --peft-root`) also adds LoraConfig.{plan.switch} and the "
            f"`lora_variants` entries of {', '.join(plan.layer_classes)}"
        ]
        return Generation(plan.name, plan.title, f"LoraConfig({plan.switch}=True)", changeset, None, notes)

    def generate_into_tree(self, spec: Any, spec_path: Path, peft_root: Path, *, force: bool) -> Any:
        from scaffold.extensions.lora_variant import generate
        from scaffold.pipeline import Generation

        plan, changeset, notes = generate.generate_into_tree(spec, spec_path, peft_root, force=force)
        return Generation(plan.name, plan.title, f"LoraConfig({plan.switch}=True)", changeset, None, notes)

    def remove_from_tree(self, name: str, peft_root: Path, *, force: bool) -> tuple[ChangeSet, list[str]] | None:
        from scaffold.extensions.lora_variant import generate

        return generate.remove_from_tree(name, peft_root, force=force)


EXTENSION = LoraVariantExtension()
