"""The docs sites, on a fake docs tree modelled on PEFT's (the sdist ships without docs/)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from scaffold.changeset import ChangeSet
from scaffold.errors import ScaffoldError
from scaffold.kinds.tuner.sites import DocsPageSite, DocsToctreeSite, docs_page
from tests.conftest import FAKE_TOCTREE, fake_registration
from tests.tuner_api import detect_peft_tree, plan_registration


TOC = DocsToctreeSite()
PAGE = DocsPageSite()


def entry(title: str, name: str, pad: int) -> str:
    return f"{' ' * pad}- local: package_reference/{name}\n{' ' * pad}  title: {title}\n"


def test_toctree_entry_goes_into_both_method_lists():
    reg = fake_registration()
    new = TOC.apply(FAKE_TOCTREE, reg)
    # Methods > Adapters is sorted by title: after the LoRA group, before Super-Tuning; 6-space layout kept
    assert (
        '          title: "Variant: DoRA"\n        title: LoRA\n'
        + entry("MySuper", "mysuper", 6)
        + "      - local: package_reference/supertuning\n"
    ) in new
    # API reference > Tuners is not sorted: appended, 4-space layout kept
    assert "      title: TinyLoRA\n" + entry("MySuper", "mysuper", 4) + "    title: Tuners\n" in new
    assert new.count("package_reference/mysuper") == 2  # not into the nested LoRA group, nor Soft Prompting
    data = YAML(typ="safe").load(new)
    assert data[1]["sections"][3]["title"] == "Adapters"
    assert TOC.is_registered(new, reg) and not TOC.is_registered(FAKE_TOCTREE, reg)


def test_toctree_is_idempotent_and_removable():
    reg = fake_registration()
    new = TOC.apply(FAKE_TOCTREE, reg)
    assert TOC.apply(new, reg) == new
    assert TOC.remove(new, reg) == FAKE_TOCTREE
    assert TOC.remove(FAKE_TOCTREE, reg) == FAKE_TOCTREE


@pytest.mark.parametrize(
    "title, name, expected",
    [
        ("AAA", "aaa", entry("AAA", "aaa", 6) + "      - local: package_reference/adalora\n"),  # first
        ("Zeta", "zeta", "        title: VeRA\n" + entry("Zeta", "zeta", 6) + "      title: Adapters\n"),  # last
    ],
)
def test_toctree_sorted_position(title: str, name: str, expected: str):
    reg = dataclasses.replace(fake_registration(), name=name, peft_type=name.upper(), docs_title=title)
    new = TOC.apply(FAKE_TOCTREE, reg)
    assert expected in new
    adapters = new[new.index("title: Layer Tuning") : new.index("title: Adapters")]
    titles = [line.split("title: ")[1] for line in adapters.splitlines() if line.startswith("        title: ")]
    assert titles == sorted(titles, key=str.lower)
    assert TOC.remove(new, reg) == FAKE_TOCTREE


def test_toctree_titles_that_need_quoting():
    reg = dataclasses.replace(fake_registration(), docs_title="MySuper: sparse #1")
    new = TOC.apply(FAKE_TOCTREE, reg)
    assert '  title: "MySuper: sparse #1"\n' in new
    assert YAML(typ="safe").load(new)  # still valid
    assert TOC.remove(new, reg) == FAKE_TOCTREE


def test_toctree_without_method_lists_or_invalid_is_refused():
    with pytest.raises(ScaffoldError, match="_toctree.yml: expected a list of method pages"):
        TOC.apply("- title: Get started\n  sections:\n  - local: index\n    title: Home\n", fake_registration())
    with pytest.raises(ScaffoldError, match="_toctree.yml: is not valid YAML"):
        TOC.apply("- title: [unclosed\n", fake_registration())


def test_toctree_crlf_and_no_final_newline():
    reg = fake_registration()
    crlf = FAKE_TOCTREE.replace("\n", "\r\n")
    new = TOC.apply(crlf, reg)
    assert new.count("\n") == new.count("\r\n")
    assert TOC.remove(new, reg) == crlf
    bare = FAKE_TOCTREE.rstrip("\n")  # no newline at the end of the file
    new = TOC.apply(bare, reg)
    assert TOC.remove(new, reg) == bare


def test_docs_page_layout():
    reg = fake_registration()
    page = docs_page(reg, year=2026)
    assert page.startswith("<!--Copyright 2026 The HuggingFace Team. All rights reserved.\n")
    assert "\n-->\n\n# MySuper\n\nMySuper is a stand-in method for tests, cloned from supertuning.\n\n" in page
    assert page.endswith(
        "## MySuperConfig\n\n[[autodoc]] tuners.mysuper.config.MySuperConfig\n\n"
        "## MySuperModel\n\n[[autodoc]] tuners.mysuper.model.MySuperModel\n"
    )
    assert PAGE.apply(None, reg) is not None
    assert PAGE.apply("# Hand-written\n", reg) == "# Hand-written\n"  # never overwrites a page
    assert PAGE.remove(PAGE.apply(None, reg), reg) is None  # removing deletes it


def test_plan_registration_with_docs(peft_tree_with_docs: Path, snapshot):
    before = snapshot(peft_tree_with_docs)
    tree = detect_peft_tree(peft_tree_with_docs)
    assert tree.has_docs
    cs = ChangeSet(peft_tree_with_docs)
    results = {r.site: r.status for r in plan_registration(cs, tree, fake_registration())}
    assert results["docs_page"] == results["docs_toctree"] == "changed"
    actions = {c["path"]: c["action"] for c in cs.to_json()}
    assert actions["docs/source/package_reference/mysuper.md"] == "create"
    assert actions["docs/source/_toctree.yml"] == "modify"
    assert snapshot(peft_tree_with_docs) == before  # nothing written until apply
