"""`doctor` on stock and edited PEFT trees."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scaffold.changeset import ChangeSet
from scaffold.errors import ScaffoldError
from tests.conftest import fake_method_files
from tests.tuner_api import (
    SITES,
    DoctorRow,
    detect_peft_tree,
    discover_methods,
    doctor,
    plan_registration,
    write_manifest,
)


# Where PEFT 0.21.2 itself is incomplete: UniLoRA is missing from test_config.py's ALL_CONFIG_CLASSES, and
# peft/__init__.py does not export MultitaskPromptEmbedding (the model class multitask_prompt_tuning registers).
KNOWN_PEFT_GAPS = {"unilora": ["test_config"], "multitask_prompt_tuning": ["peft_init"]}


def methods_by_hand(root: Path) -> set[str]:
    """Every method of the tree, found with plain regexes (independently of the code under test)."""
    types = (root / "src/peft/utils/peft_types.py").read_text()
    body = types[types.index("class PeftType") : types.index("class TaskType")]
    names = {m.lower() for m in re.findall(r'^    ([A-Z0-9_]+) = "', body, re.M)}
    for init in (root / "src/peft/tuners").glob("*/__init__.py"):
        found = re.search(r'register_peft_method\(\s*name="(\w+)"', init.read_text())
        if found:
            names.add(found.group(1))
    return names


@pytest.fixture(scope="module")
def stock_rows(peft_sdist: Path) -> dict[str, DoctorRow]:
    return {row.name: row for row in doctor(detect_peft_tree(peft_sdist))}


def test_every_method_of_stock_peft_is_listed(peft_sdist: Path, stock_rows: dict[str, DoctorRow]):
    rows = list(stock_rows.values())
    assert {row.name for row in rows} == methods_by_hand(peft_sdist)
    assert len(rows) >= 45
    assert all(set(row.sites) == {s.name for s in SITES} for row in rows)


def test_completely_registered_methods_show_no_gaps(stock_rows: dict[str, DoctorRow]):
    rows = stock_rows
    for name, row in rows.items():
        assert row.gaps == KNOWN_PEFT_GAPS.get(name, []), name
        assert not row.problems, name
    for name in ("lora", "loha", "vera", "supertuning", "tinylora", "ia3", "boft"):
        assert rows[name].complete
        assert all(
            status == "ok"
            for site, status in rows[name].sites.items()
            if not site.startswith("docs") and site != "test_merge_skip"
        ), name
        assert rows[name].sites["test_merge_skip"] == "n/a: only methods that cannot be merged are listed"
    # PEFT's merge tests skip its methods that cannot merge
    assert rows["lily"].sites["test_merge_skip"] == "ok"


def test_applicability_follows_what_peft_does(stock_rows: dict[str, DoctorRow]):
    rows = stock_rows
    # prompt learning has no target-module mapping and is not in the custom-model matrix
    assert rows["prompt_tuning"].sites["constants"] == "n/a: uses no target-module mapping"
    assert rows["prompt_tuning"].sites["test_custom_models"].startswith("n/a: not a target_modules tuner")
    assert rows["prompt_tuning"].sites["test_config"] == "ok"
    assert rows["poly"].sites["test_custom_models"].startswith("n/a: needs task ids")
    # optional sites are reported, not counted as gaps
    assert rows["hira"].optional_gaps == ["reexport_other", "reexport_utils"]
    assert rows["osf"].sites["test_custom_models_multi"] == "missing (optional)"
    assert rows["ln_tuning"].sites["constants"] == "ok"  # its mapping is named LNTUNING, not LN_TUNING
    # the sdist has no docs
    assert rows["lora"].sites["docs_page"] == "n/a: tree has no docs/"
    assert rows["unilora"].as_dict()["gaps"] == ["test_config"]


def test_docs_are_checked_when_the_tree_has_them(peft_tree_with_docs: Path):
    rows = {row.name: row for row in doctor(detect_peft_tree(peft_tree_with_docs))}
    assert rows["lora"].sites["docs_page"] == rows["lora"].sites["docs_toctree"] == "ok"
    assert rows["ln_tuning"].sites["docs_page"] == "ok"  # documented on layernorm_tuning.md
    assert rows["ln_tuning"].sites["docs_toctree"] == "ok"
    assert "docs_page" in rows["boft"].gaps  # the fake docs tree has no page for it


def test_one_method_and_unknown_method(peft_sdist: Path):
    tree = detect_peft_tree(peft_sdist)
    [row] = doctor(tree, "tinylora")
    assert row.method.config_cls == "TinyLoraConfig" and row.method.model_cls == "TinyLoraModel"
    assert row.method.constant_names == ("TRANSFORMERS_MODELS_TO_TINYLORA_TARGET_MODULES_MAPPING",)
    with pytest.raises(ScaffoldError, match="nope: no such method"):
        doctor(tree, "nope")


def test_registered_method_is_complete_and_gaps_show(peft_tree: Path):
    tree = detect_peft_tree(peft_tree)
    reg, files = fake_method_files(peft_tree)
    cs = ChangeSet(peft_tree)
    for rel, text in files.items():
        cs.write(rel, text)
    plan_registration(cs, tree, reg)
    write_manifest(cs, tree, reg, files, spec_hash="x")
    cs.apply()
    [row] = doctor(tree, "mysuper")
    assert row.complete and row.method.generated and not row.optional_gaps

    # take it out of the test matrix by hand: doctor notices
    path = peft_tree / "tests/test_config.py"
    path.write_text(path.read_text().replace("    (MySuperConfig, {}),\n", ""))
    [row] = doctor(tree, "mysuper")
    assert row.gaps == ["test_config"]


def test_member_without_package_and_package_without_member(peft_tree: Path):
    types = peft_tree / "src/peft/utils/peft_types.py"
    types.write_text(types.read_text().replace('    DEFT = "DEFT"\n', '    DEFT = "DEFT"\n    GHOST = "GHOST"\n'))
    reg, files = fake_method_files(peft_tree)
    for rel, text in files.items():  # a package nobody registered
        (peft_tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (peft_tree / rel).write_text(text)
    rows = {row.name: row for row in doctor(detect_peft_tree(peft_tree))}
    assert rows["ghost"].problems == ("PeftType.GHOST has no package calling register_peft_method(name='ghost')",)
    assert "peft_types" in rows["mysuper"].gaps and "tuners_init" in rows["mysuper"].gaps
    assert not rows["mysuper"].method.generated
    assert {m.name for m in discover_methods(detect_peft_tree(peft_tree))} >= {"ghost", "mysuper"}
