"""docs/coverage.md: which of PEFT's layer tuners the spec language can express, counted from the PEFT sdist.

`python -m scaffold.coverage` reads PEFT's methods from the sdist (the `register_peft_method(...)` call of every
`src/peft/tuners/<name>/__init__.py`), sorts them into layer tuners (the model class derives from `BaseTuner`) and
prompt-based methods, reads the judgement of each layer tuner from docs/coverage.yaml, checks the two against each
other, and writes docs/coverage.md. `--check` compares instead of writing (exit 1 when the page is stale). Nothing
is imported from the sdist: its source is parsed with `ast`.
"""

from __future__ import annotations

import argparse
import ast
import functools
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_FILE = REPO_ROOT / "docs" / "coverage.yaml"
PAGE_FILE = REPO_ROOT / "docs" / "coverage.md"

STATUSES = ("reference", "expressible", "needs", "out_of_scope")
# which keys an entry of each status must have, and which it may have
_REQUIRED = {
    "reference": {"status", "spec", "parity", "parity_layers"},
    "expressible": {"status", "note"},
    "needs": {"status", "needs", "note"},
    "out_of_scope": {"status", "reason"},
}
_OPTIONAL = {"reference": {"gaps"}, "expressible": set(), "needs": set(), "out_of_scope": set()}


class CoverageError(ValueError):
    """The data file and the sdist disagree, or the data file is malformed; the message says where."""


@dataclass(frozen=True)
class PeftMethod:
    name: str
    config_cls: str
    model_cls: str
    layer_tuner: bool  # the model class derives from BaseTuner: it swaps layers of the model for tuner layers
    prompt_learning: bool  # the config derives from PromptLearningConfig


@dataclass
class Coverage:
    peft_version: str
    methods: list[PeftMethod]
    features: dict[str, dict[str, Any]]
    tuners: dict[str, dict[str, Any]]
    errors: list[str] = field(default_factory=list)

    @property
    def layer_tuners(self) -> list[PeftMethod]:
        return [m for m in self.methods if m.layer_tuner]


# ---------------------------------------------------------------------------------------------------------------------
# Reading the sdist


def _class_bases(src: Path) -> dict[str, set[str]]:
    """Every class defined in PEFT's tuners and its config module -> the names of its bases (the last dotted part;
    class names are unique enough there). `BaseTuner` and `PromptLearningConfig` are among them."""
    bases: dict[str, set[str]] = {}
    for path in [src / "peft" / "config.py", *sorted((src / "peft" / "tuners").rglob("*.py"))]:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names = {ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases}
                bases.setdefault(node.name, set()).update(names)
    return bases


def _derives(cls: str, ancestor: str, bases: dict[str, set[str]]) -> bool:
    seen: set[str] = set()
    todo = [cls]
    while todo:
        current = todo.pop()
        if current == ancestor:
            return True
        if current not in seen:
            seen.add(current)
            todo.extend(bases.get(current, ()))
    return False


@functools.lru_cache(maxsize=4)
def peft_methods(sdist: Path) -> tuple[PeftMethod, ...]:
    """PEFT's methods as registered in the sdist's `src/peft/tuners/*/__init__.py`, sorted by name (cached: the
    sdist is read-only)."""
    src = Path(sdist) / "src"
    bases = _class_bases(src)
    methods = []
    for init in sorted((src / "peft" / "tuners").glob("*/__init__.py")):
        for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("register_peft_method")):
                continue
            kwargs = {kw.arg: kw.value for kw in node.keywords if kw.arg}
            name = kwargs.get("name")
            if not isinstance(name, ast.Constant) or not isinstance(name.value, str):
                raise CoverageError(f"{init}: register_peft_method without a literal name")
            config_cls = ast.unparse(kwargs["config_cls"]) if "config_cls" in kwargs else ""
            model_cls = ast.unparse(kwargs["model_cls"]) if "model_cls" in kwargs else ""
            methods.append(
                PeftMethod(
                    name=name.value,
                    config_cls=config_cls,
                    model_cls=model_cls,
                    layer_tuner=_derives(model_cls, "BaseTuner", bases),
                    prompt_learning=_derives(config_cls, "PromptLearningConfig", bases),
                )
            )
    if not methods:
        raise CoverageError(f"{sdist}: no register_peft_method calls found (not a PEFT source tree?)")
    return tuple(sorted(methods, key=lambda m: m.name))


# ---------------------------------------------------------------------------------------------------------------------
# Reading and checking the data file


def load(sdist: Path, data_file: Path | None = None, repo_root: Path | None = None) -> Coverage:
    """Read the data file (default docs/coverage.yaml) and the sdist and check them against each other; problems are
    collected in `errors`."""
    data_file = DATA_FILE if data_file is None else data_file
    data = yaml.safe_load(Path(data_file).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("tuners"), dict):
        raise CoverageError(f"{data_file}: expected a mapping with `tuners`")
    coverage = Coverage(
        peft_version=str(data.get("peft_version", "")),
        methods=list(peft_methods(Path(sdist).resolve())),
        features=dict(data.get("features") or {}),
        tuners=dict(data["tuners"]),
    )
    coverage.errors = check(coverage, REPO_ROOT if repo_root is None else repo_root)
    return coverage


def check(coverage: Coverage, repo_root: Path = REPO_ROOT) -> list[str]:
    """Every layer tuner of the sdist has one well-formed entry, and every entry is a layer tuner of the sdist."""
    errors = []
    layer_tuners = {m.name for m in coverage.layer_tuners}
    all_methods = {m.name for m in coverage.methods}
    for name in sorted(layer_tuners - set(coverage.tuners)):
        errors.append(f"tuners: PEFT's layer tuner `{name}` has no entry")
    for name in sorted(set(coverage.tuners) - layer_tuners):
        what = "is not a layer tuner" if name in all_methods else "is not a PEFT method"
        errors.append(f"tuners.{name}: {what} in the sdist")
    for name, entry in sorted(coverage.tuners.items()):
        where = f"tuners.{name}"
        if not isinstance(entry, dict):
            errors.append(f"{where}: expected a mapping")
            continue
        status = entry.get("status")
        if status not in STATUSES:
            errors.append(f"{where}.status: {status!r} is not one of {', '.join(STATUSES)}")
            continue
        keys = set(entry)
        for key in sorted(_REQUIRED[status] - keys):
            errors.append(f"{where}: status {status} needs `{key}`")
        for key in sorted(keys - _REQUIRED[status] - _OPTIONAL[status]):
            errors.append(f"{where}.{key}: not a field of a `{status}` entry")
        for feature in entry.get("needs") or ():
            if feature not in coverage.features:
                errors.append(f"{where}.needs: unknown feature `{feature}`")
        if status == "needs" and not entry.get("needs"):
            errors.append(f"{where}.needs: empty")
        for key in ("spec", "parity"):
            if key in entry and not (repo_root / str(entry[key])).is_file():
                errors.append(f"{where}.{key}: {entry[key]} does not exist")
        if "spec" in entry and not str(entry["spec"]).startswith("reference_methods/"):
            errors.append(f"{where}.spec: reference specs live in reference_methods/")
    for name, feature in sorted(coverage.features.items()):
        if not isinstance(feature, dict) or not feature.get("text"):
            errors.append(f"features.{name}: needs a `text`")
    return errors


# ---------------------------------------------------------------------------------------------------------------------
# The page


def _one_line(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render(coverage: Coverage) -> str:
    layer = coverage.layer_tuners
    others = [m for m in coverage.methods if not m.layer_tuner]
    statuses = Counter(coverage.tuners[m.name]["status"] for m in layer)
    expressible = statuses["reference"] + statuses["expressible"]
    issue_features = [name for name, feature in coverage.features.items() if feature.get("issue") == 10]
    unlocked = [
        m.name
        for m in layer
        if coverage.tuners[m.name]["status"] == "needs"
        and set(coverage.tuners[m.name]["needs"]) <= set(issue_features)
    ]
    lines = [
        "# Coverage of PEFT's methods",
        "",
        "<!-- Generated by `python -m scaffold.coverage` from docs/coverage.yaml and the PEFT sdist; do not edit. -->",
        "",
        f"PEFT {coverage.peft_version} registers **{len(coverage.methods)} methods**: **{len(layer)} layer tuners** "
        f"(their model class derives from `BaseTuner`) and {len(others)} prompt-based methods "
        f"({', '.join(m.name for m in others)}).",
        "",
        f"Of the {len(layer)} layer tuners, **{expressible} are expressible** as a spec today "
        f"({statuses['reference']} with a reference spec at parity with PEFT, {statuses['expressible']} without "
        f"one yet), **{statuses['needs']} need spec-language features** and **{statuses['out_of_scope']} are out "
        "of scope**.",
        "",
        f"With all of issue #10's features ({', '.join(f'`{f}`' for f in issue_features)}), "
        f"**{expressible + len(unlocked)} would be expressible**: {expressible} plus {', '.join(unlocked) or 'none'}.",
        "",
        "Judged against the spec language of [spec.md](spec.md). A reference spec's parity test compares forward, "
        "merged and unmerged weights with PEFT's method, the same weights copied across, within 1e-5 (fp32) on the "
        "layer types listed.",
        "",
        "## Layer tuners",
        "",
        "| tuner | status | needs / reference spec | notes |",
        "| --- | --- | --- | --- |",
    ]
    for method in layer:
        entry = coverage.tuners[method.name]
        status = entry["status"]
        if status == "reference":
            where = (
                f"[{entry['spec']}](../{entry['spec']}): parity on {', '.join(entry['parity_layers'])} "
                f"(`{entry['parity']}`)"
            )
            notes = f"not expressed: {entry['gaps']}" if entry.get("gaps") else ""
            label = "expressible (reference spec)"
        elif status == "expressible":
            where, notes, label = "", entry["note"], "expressible"
        elif status == "needs":
            where = ", ".join(f"`{f}`" for f in entry["needs"])
            notes, label = entry["note"], "needs features"
        else:
            where, notes, label = "", entry["reason"], "out of scope"
        lines.append(f"| {method.name} | {label} | {_one_line(where)} | {_one_line(notes)} |")

    lines += [
        "",
        "## Features",
        "",
        "`needed by`: layer tuners listing the feature; `unlocks alone`: those it is the only missing feature of.",
        "",
        "| feature | issue | needed by | unlocks alone | what |",
        "| --- | --- | --- | --- | --- |",
    ]
    blocked = {m.name: coverage.tuners[m.name].get("needs") or [] for m in layer}
    blocked = {name: needs for name, needs in blocked.items() if coverage.tuners[name]["status"] == "needs"}
    ranked = sorted(coverage.features, key=lambda f: (-sum(f in n for n in blocked.values()), f))
    for feature in ranked:
        needed_by = sorted(name for name, needs in blocked.items() if feature in needs)
        alone = sorted(name for name, needs in blocked.items() if needs == [feature])
        issue = f"#{coverage.features[feature]['issue']}" if coverage.features[feature].get("issue") else "-"
        lines.append(
            f"| `{feature}` | {issue} | {len(needed_by)}: {', '.join(needed_by) or '-'} | "
            f"{len(alone)}: {', '.join(alone) or '-'} | {_one_line(coverage.features[feature]['text'])} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scaffold.coverage",
        description="Write docs/coverage.md from docs/coverage.yaml and the PEFT sdist (downloaded once, cached).",
    )
    parser.add_argument(
        "--sdist", type=Path, help="a PEFT source tree (default: the cached sdist of the data's version)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/coverage.md is not the script's output")
    args = parser.parse_args(argv)
    try:
        if args.sdist is None:
            from scaffold.peft_source import ensure_peft_sdist

            version = str(yaml.safe_load(DATA_FILE.read_text(encoding="utf-8")).get("peft_version"))
            args.sdist = ensure_peft_sdist(version)
        coverage = load(args.sdist)
    except (CoverageError, OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if coverage.errors:
        for error in coverage.errors:
            print(f"error: {Path(DATA_FILE).name}: {error}", file=sys.stderr)
        return 2
    page = render(coverage)
    if args.check:
        current = PAGE_FILE.read_text(encoding="utf-8") if PAGE_FILE.is_file() else ""
        if current != page:
            print(f"{PAGE_FILE} is stale: run `python -m scaffold.coverage`", file=sys.stderr)
            return 1
        print(f"{PAGE_FILE} is current")
        return 0
    PAGE_FILE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
