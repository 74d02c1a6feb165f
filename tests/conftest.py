"""Shared fixtures: PEFT source trees (copied from the cached sdist, never re-downloaded within a run)."""

from __future__ import annotations

import functools
import hashlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


# Make `scaffold` importable when the project is not installed into the environment.
_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from scaffold.kinds.tuner.registration import MethodRegistration  # noqa: E402
from scaffold.peft_source import DEFAULT_PEFT_VERSION, copy_peft_tree, ensure_peft_sdist  # noqa: E402


# Versions the registrar supports, newest first (latest patch of each minor).
SUPPORTED_PEFT_VERSIONS = ("0.21.2", "0.20.0", "0.19.1")


@pytest.fixture(scope="session")
def peft_sdist() -> Path:
    """The cached, read-only PEFT sdist of the default version. Never write into it."""
    return ensure_peft_sdist(DEFAULT_PEFT_VERSION)


@pytest.fixture(scope="session")
def peft_sdist_for() -> Callable[[str], Path]:
    """`peft_sdist_for("0.20.0")`: the cached, read-only sdist of another version."""
    return ensure_peft_sdist


@pytest.fixture
def peft_tree(peft_sdist: Path, tmp_path: Path) -> Path:
    """A fresh, writable copy of the default PEFT sdist."""
    return copy_peft_tree(peft_sdist, tmp_path / "peft")


@pytest.fixture
def make_peft_tree(tmp_path: Path) -> Callable[[str], Path]:
    """`make_peft_tree("0.19.1")`: a fresh, writable copy of that version's sdist."""
    counter = iter(range(1_000_000))

    def make(version: str = DEFAULT_PEFT_VERSION) -> Path:
        return copy_peft_tree(ensure_peft_sdist(version), tmp_path / f"peft-{version}-{next(counter)}")

    return make


def snapshot_tree(root: Path) -> dict[str, tuple[str, int]]:
    """Everything under `root`: files as (sha256, mode), directories as ("dir", mode)."""
    out: dict[str, tuple[str, int]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        mode = path.stat().st_mode & 0o7777
        out[rel] = ("dir", mode) if path.is_dir() else (hashlib.sha256(path.read_bytes()).hexdigest(), mode)
    return out


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, tuple[str, int]]]:
    return snapshot_tree


@contextmanager
def memoized_cst_parse(maxsize: int | None = None) -> Iterator[Any]:
    """Within the block, `scaffold.register._cst.parse` keeps the last `maxsize` modules it parsed (None: all of
    them; its own cache keeps 16).

    For tests that run `new`/`remove` on the same PEFT texts many times (killed at every step, or with hundreds of
    generated specs): every run parses the same ~30 texts (registry files, statements of PEFT's test modules), and
    parsing is half of `remove`'s time. libcst trees are immutable and the parse is a pure function of the text, so
    a run sees exactly what it would see without the cache (a text that is not valid Python raises every time);
    runs forked from the test process inherit what it has parsed so far. Yields the cached function
    (`cache_info()`)."""
    from scaffold.register import _cst

    parse = _cst.parse
    cached = functools.lru_cache(maxsize=maxsize)(parse)
    _cst.parse = cached
    try:
        yield cached
    finally:
        _cst.parse = parse


def cloned_tuner_files(root: Path, source: str, name: str, source_camel: str, camel: str) -> dict[str, str]:
    """The files of `src/peft/tuners/<source>` re-homed to `src/peft/tuners/<name>` with the method's names rewritten
    (`source` -> `name`, upper case too, and `source_camel` -> `camel` in class names): {relpath: text}."""
    src_dir = root / "src" / "peft" / "tuners" / source
    replacements = ((source_camel, camel), (source.upper(), name.upper()), (source, name))
    files = {}
    for path in sorted(src_dir.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for old, new in replacements:
            text = text.replace(old, new)
        files[f"src/peft/tuners/{name}/{path.relative_to(src_dir).as_posix()}"] = text
    return files


def clone_tuner(root: Path, source: str, name: str, source_camel: str, camel: str) -> list[str]:
    """Write `cloned_tuner_files` into the tree at `root`; return their relpaths. For making a stand-in method
    before a generator exists; only ever use it on a temporary copy."""
    files = cloned_tuner_files(root, source, name, source_camel, camel)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return list(files)


# A docs tree modelled on PEFT's (huggingface/peft main, docs/source/): the sdist ships without docs/. It keeps the
# real file's quirks: sections under "Methods" are indented by 4, the others by 2; the "Adapters" list is sorted
# by title and holds a nested "LoRA" group; the API reference "Tuners" list is not sorted.
FAKE_TOCTREE = """\
- title: Get started
  sections:
  - local: index
    title: 🤗 PEFT
  - local: install
    title: Installation

- title: Methods
  sections:
    - local: methods/overview
      title: Overview
    - sections:
      - local: package_reference/cpt
        title: CPT
      - local: package_reference/prompt_tuning
        title: Prompt tuning
      title: Soft Prompting
    - sections:
      - local: package_reference/beft
        title: BEFT
      - local: package_reference/layernorm_tuning
        title: LayerNorm Tuning
      title: Layer Tuning
    - sections:
      - local: package_reference/adalora
        title: AdaLoRA
      - local: package_reference/loha
        title: LoHa
      - sections:
        - local: package_reference/lora
          title: LoRA
        - local: package_reference/lora_variant_dora
          title: "Variant: DoRA"
        title: LoRA
      - local: package_reference/supertuning
        title: Super-Tuning
      - local: package_reference/tinylora
        title: TinyLoRA
      - local: package_reference/vera
        title: VeRA
      title: Adapters

- isExpanded: false
  sections:
  - sections:
    - local: package_reference/peft_model
      title: PEFT model
    - local: package_reference/config
      title: Configuration
    title: Main classes
  - sections:
    - local: package_reference/adalora
      title: AdaLoRA
    - local: package_reference/layernorm_tuning
      title: LayerNorm Tuning
    - local: package_reference/lora
      title: LoRA
    - local: package_reference/loha
      title: LoHa
    - local: package_reference/vera
      title: VeRA
    - local: package_reference/supertuning
      title: Super-Tuning
    - local: package_reference/tinylora
      title: TinyLoRA
    title: Tuners
  title: API reference
"""

# package_reference page -> (title, tuner package it documents, config class, model class)
FAKE_DOC_PAGES = {
    "adalora": ("AdaLoRA", "adalora", "AdaLoraConfig", "AdaLoraModel"),
    "layernorm_tuning": ("LayerNorm Tuning", "ln_tuning", "LNTuningConfig", "LNTuningModel"),
    "loha": ("LoHa", "loha", "LoHaConfig", "LoHaModel"),
    "lora": ("LoRA", "lora", "LoraConfig", "LoraModel"),
    "supertuning": ("Super-Tuning", "supertuning", "SupertuningConfig", "SupertuningModel"),
    "tinylora": ("TinyLoRA", "tinylora", "TinyLoraConfig", "TinyLoraModel"),
    "vera": ("VeRA", "vera", "VeraConfig", "VeraModel"),
}


def add_fake_docs(root: Path) -> Path:
    """Give the tree at `root` a small docs/source modelled on PEFT's (see FAKE_TOCTREE)."""
    source = root / "docs" / "source"
    (source / "package_reference").mkdir(parents=True, exist_ok=True)
    (source / "_toctree.yml").write_text(FAKE_TOCTREE, encoding="utf-8")
    for page, (title, package, config, model) in FAKE_DOC_PAGES.items():
        text = f"# {title}\n\n## {config}\n\n[[autodoc]] tuners.{package}.config.{config}\n\n"
        text += f"## {model}\n\n[[autodoc]] tuners.{package}.model.{model}\n"
        (source / "package_reference" / f"{page}.md").write_text(text, encoding="utf-8")
    return source


@pytest.fixture
def peft_tree_with_docs(peft_tree: Path) -> Path:
    """`peft_tree` plus a fake docs/ tree (FAKE_TOCTREE and a few method pages)."""
    add_fake_docs(peft_tree)
    return peft_tree


# Stand-in methods cloned from a PEFT method (see `clone_tuner`), with PEFT's own test rows for the original.
# supertuning is in 0.21.x only; tinylora is in 0.19.x-0.21.x.
_FAKE_METHODS: dict[str, dict[str, Any]] = {
    "supertuning": {
        "source_camel": "Supertuning",
        "name": "mysuper",
        "camel": "MySuper",
        "test_cases": (
            ("Vanilla MLP 1 MySuper", "MLP", {"sparsity": 0.5, "target_modules": "lin0"}),
            ("Vanilla MLP 2 MySuper", "MLP", {"sparsity": 0.5, "target_modules": ["lin0"]}),
            ("Vanilla MLP 3 MySuper", "MLP", {"sparsity": 0.5, "target_modules": ["lin1"]}),
            (
                "Vanilla MLP 4 MySuper bottom-k",
                "MLP",
                {"sparsity": 0.5, "target_modules": ["lin0", "lin1"], "select_top": False},
            ),
            ("Vanilla MLP 5 MySuper Supra (r=2)", "MLP", {"sparsity": 0.5, "target_modules": ["lin0"], "r": 2}),
        ),
        "multi": (
            (
                "MySuper Same",
                {"sparsity": 0.5, "target_modules": ["lin0"], "r": 2, "init_weights": False},
                {"sparsity": 0.5, "target_modules": ["lin0"], "r": 2, "init_weights": False},
            ),
            (
                "MySuper Different",
                {"sparsity": 0.5, "target_modules": ["lin0"], "r": 2, "init_weights": False},
                {"sparsity": 0.5, "target_modules": ["lin1"], "r": 2, "init_weights": False},
            ),
        ),
    },
    "tinylora": {
        "source_camel": "TinyLora",
        "name": "mytiny",
        "camel": "MyTiny",
        "test_cases": (
            ("Vanilla MLP 1 MyTiny", "MLP", {"target_modules": "lin0", "r": 2, "u": 16}),
            ("Vanilla MLP 4 MyTiny", "MLP", {"target_modules": ["lin0", "lin1"], "r": 2, "u": 32}),
        ),
        "multi": (
            (
                "MyTiny Different",
                {"target_modules": ["lin0"], "init_weights": "uniform"},
                {"target_modules": ["lin1"], "init_weights": "uniform"},
            ),
        ),
    },
}


def fake_registration(source: str = "supertuning") -> MethodRegistration:
    """The registration of the stand-in method cloned from `source` ("supertuning" or "tinylora")."""
    spec = _FAKE_METHODS[source]
    camel = spec["camel"]
    return MethodRegistration(
        name=spec["name"],
        peft_type=spec["name"].upper(),
        config_cls=f"{camel}Config",
        model_cls=f"{camel}Model",
        exported=(f"{camel}Config", f"{camel}Model"),
        target_modules=None,
        test_cases=spec["test_cases"],
        multiple_active_adapters_cases=spec["multi"],
        docs_title=camel,
        docs_summary=f"{camel} is a stand-in method for tests, cloned from {source}.",
    )


def fake_method_files(root: Path, source: str = "supertuning") -> tuple[MethodRegistration, dict[str, str]]:
    """The registration and package files ({relpath: text}) of a stand-in method cloned from `source`."""
    spec = _FAKE_METHODS[source]
    files = cloned_tuner_files(root, source, spec["name"], spec["source_camel"], spec["camel"])
    return fake_registration(source), files


def install_fake_method(root: Path, source: str = "supertuning") -> tuple[MethodRegistration, list[str]]:
    """Write the stand-in method cloned from `source` into the tree at `root`; return its registration and files."""
    spec = _FAKE_METHODS[source]
    files = clone_tuner(root, source, spec["name"], spec["source_camel"], spec["camel"])
    return fake_registration(source), files


def register_fake_method(root: Path, source: str = "supertuning") -> MethodRegistration:
    """Write the stand-in method cloned from `source` into the tree at `root` and register it there with the
    registrar alone (no generator): the registry edits and the manifest, applied. Returns its registration."""
    from scaffold.changeset import ChangeSet
    from tests.tuner_api import detect_peft_tree, plan_registration, write_manifest

    reg, files = fake_method_files(root, source)
    tree = detect_peft_tree(root)
    changeset = ChangeSet(root)
    for rel, text in files.items():
        changeset.write(rel, text)
    plan_registration(changeset, tree, reg)
    write_manifest(changeset, tree, reg, files, spec_hash="suite")
    changeset.apply()
    return reg


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow (end-to-end) cases first, in their collected order: xdist hands the first tests out to the workers in
    turn, so the long PEFT-matrix runs start early on both workers instead of leaving one worker alone at the end.
    The order is deterministic, as xdist requires every worker to collect the same list."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
