"""`doctor`: for every method in a tree, which registry sites it is in and what is missing.

Methods are found from `PeftType` members and from the tuner packages that call `register_peft_method(...)`
(hand-written ones included). A site counts for a method only where PEFT itself does it for such methods
(`Site.doctor_skip_reason`):

- tuners_init / peft_init / test_config / docs: every method with a package.
- constants: methods whose package uses a `TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING` (not prompt learning,
  X-LoRA, Shadow, trainable tokens, ...); the check is that every mapping the package uses is defined.
- test_custom_models: the same `target_modules` tuners, except poly (needs task ids; its own test file).
- optional sites (reported, never a gap): the mapping re-exports (PEFT skips them for hira and osf) and
  MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES (absent for methods without multi-adapter support, e.g. ln_tuning, osf).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from scaffold.core.manifest import read_manifest
from scaffold.errors import ScaffoldError
from scaffold.kinds.tuner import KIND
from scaffold.kinds.tuner.registration import DiscoveredMethod
from scaffold.kinds.tuner.sites import SITES, TunerSite, peft_type_members
from scaffold.register.tree import PeftTree


_MAPPING_USE = re.compile(r"\bTRANSFORMERS_MODELS_TO_\w+_TARGET_MODULES_MAPPING\b")

OK, MISSING, OPTIONAL_MISSING = "ok", "missing", "missing (optional)"


@dataclass(frozen=True)
class DoctorRow:
    method: DiscoveredMethod
    sites: dict[str, str] = field(default_factory=dict)  # site name -> "ok" | "missing" | ... | "n/a: <why>"
    problems: tuple[str, ...] = ()  # inconsistencies outside the sites (a member without a package, ...)

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def gaps(self) -> list[str]:
        """Required sites the method is missing from."""
        return [site for site, status in self.sites.items() if status == MISSING]

    @property
    def optional_gaps(self) -> list[str]:
        return [site for site, status in self.sites.items() if status == OPTIONAL_MISSING]

    @property
    def complete(self) -> bool:
        return not self.gaps and not self.problems

    def as_dict(self) -> dict[str, object]:
        """For `--json` output."""
        return {
            "name": self.name,
            "peft_type": self.method.peft_type,
            "config_cls": self.method.config_cls,
            "model_cls": self.method.model_cls,
            "generated": self.method.generated,
            "sites": dict(self.sites),
            "gaps": self.gaps,
            "optional_gaps": self.optional_gaps,
            "problems": list(self.problems),
        }


def _registration_call(init_source: str, relpath: str) -> dict[str, str] | None:
    """The keyword arguments (as source text) of the `register_peft_method(...)` call in a package __init__."""
    try:
        tree = ast.parse(init_source)
    except SyntaxError as exc:
        raise ScaffoldError(relpath, f"is not valid Python (line {exc.lineno}: {exc.msg})") from exc
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "register_peft_method":
            return {
                kw.arg: ast.get_source_segment(init_source, kw.value) or ""
                for kw in node.keywords
                if kw.arg is not None
            }
    return None


def _string(code: str) -> str:
    return code.strip("\"'")


def discover_methods(tree: PeftTree) -> list[DiscoveredMethod]:
    """All methods of the tree, sorted by name."""
    members = peft_type_members((tree.root / "src/peft/utils/peft_types.py").read_text(encoding="utf-8"))
    found: dict[str, DiscoveredMethod] = {}
    for package in sorted(p for p in tree.tuners_dir.iterdir() if (p / "__init__.py").is_file()):
        rel = f"src/peft/tuners/{package.name}/__init__.py"
        kwargs = _registration_call((package / "__init__.py").read_text(encoding="utf-8"), rel)
        if kwargs is None or "name" not in kwargs:
            continue  # e.g. tuners/mixed: a helper package, not a method
        name = _string(kwargs["name"])
        source = "\n".join(p.read_text(encoding="utf-8") for p in sorted(package.rglob("*.py")))
        found[name] = DiscoveredMethod(
            name=name,
            peft_type=name.upper(),
            config_cls=kwargs.get("config_cls", ""),
            model_cls=kwargs.get("model_cls", ""),
            has_package=True,
            constant_names=tuple(sorted(set(_MAPPING_USE.findall(source)))),
            generated=read_manifest(tree.root, KIND, name) is not None,
        )
    for member in members:
        if member.lower() not in found:
            found[member.lower()] = DiscoveredMethod(name=member.lower(), peft_type=member)
    return [found[k] for k in sorted(found)]


def doctor(tree: PeftTree, name: str | None = None, sites: list[TunerSite] = SITES) -> list[DoctorRow]:
    methods = discover_methods(tree)
    if name is not None:
        methods = [method for method in methods if method.name == name]
        if not methods:
            raise ScaffoldError(name, "no such method in this tree (no PeftType member, no tuner package)")
    return [_check(tree, method, sites) for method in methods]


def _check(tree: PeftTree, method: DiscoveredMethod, sites: list[TunerSite]) -> DoctorRow:
    statuses: dict[str, str] = {}
    for site in sites:
        reason = site.doctor_skip_reason(tree, method)
        if reason is not None:
            statuses[site.name] = f"n/a: {reason}"
        elif site.doctor_is_registered(tree, method):
            statuses[site.name] = OK
        else:
            statuses[site.name] = MISSING if site.required else OPTIONAL_MISSING
    problems = []
    if not method.has_package:
        problems.append(
            f"PeftType.{method.peft_type} has no package calling register_peft_method(name={method.name!r})"
        )
    return DoctorRow(method=method, sites=statuses, problems=tuple(problems))
