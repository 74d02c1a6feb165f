"""The libcst building blocks: inserting into / removing from bracketed sequences, sort orders, literals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import libcst as cst
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaffold.changeset import read_text
from scaffold.register import _cst
from scaffold.register import transforms as t


# -- sequences -------------------------------------------------------------------------------------------------------


@st.composite
def sequence_sources(draw: st.DrawFn) -> tuple[str, str]:
    """A module with one multi-line list / tuple / `from x import (...)`, with comments in random places.

    Returns (source, kind)."""
    kind = draw(st.sampled_from(["list", "tuple", "import"]))
    n = draw(st.integers(1, 5))
    trailing_comma = draw(st.booleans()) or kind == "import" or (kind == "tuple" and n == 1)
    lines = []
    for i in range(n):
        for c in range(draw(st.integers(0, 2))):
            lines.append(f"    # about item {i} ({c})")
        item = f"Name{i}" if kind == "import" else f'"item{i}"'
        comma = "," if i < n - 1 or trailing_comma else ""
        comment = "  # trailing" if draw(st.booleans()) else ""
        lines.append(f"    {item}{comma}{comment}")
    for c in range(draw(st.integers(0, 1))):
        lines.append("    # before the closing bracket")
    opening, closing = {"list": ("x = [", "]"), "tuple": ("x = (", ")"), "import": ("from m import (", ")")}[kind]
    return "\n".join(["# head", opening, *lines, closing, "y = 1", ""]), kind


def source_has_trailing_comma(source: str) -> bool:
    body = source.split("\n")
    closing = max(i for i, line in enumerate(body) if line in ("]", ")"))
    last_item = max(i for i in range(closing) if not body[i].strip().startswith("#"))
    return body[last_item].split("  #")[0].endswith(",")


def _container(module: cst.Module) -> cst.List | cst.Tuple | cst.ImportFrom:
    small = module.body[0].body[0]  # type: ignore[attr-defined]
    return small if isinstance(small, cst.ImportFrom) else small.value


def _with_container(module: cst.Module, node: cst.CSTNode) -> cst.Module:
    stmt = module.body[0]
    small = stmt.body[0]  # type: ignore[attr-defined]
    new_small = node if isinstance(small, cst.ImportFrom) else small.with_changes(value=node)
    return module.with_changes(body=[stmt.with_changes(body=[new_small]), *module.body[1:]])


def _new_item(kind: str) -> cst.BaseElement | cst.ImportAlias:
    return cst.ImportAlias(name=cst.Name("NewName")) if kind == "import" else _cst.element('"new"')


@settings(max_examples=150, deadline=None)
@given(data=st.data(), source_kind=sequence_sources())
def test_insert_then_remove_is_byte_identical(data: st.DataObject, source_kind: tuple[str, str]):
    source, kind = source_kind
    module = cst.parse_module(source)
    node = _container(module)
    size = len(node.names if isinstance(node, cst.ImportFrom) else node.elements)  # type: ignore[arg-type]
    index = data.draw(st.integers(0, size))
    banner = data.draw(st.sampled_from([[], ["# banner"]]))
    inserted = _cst.insert_item(node, index, _new_item(kind), _cst.comment_lines(node, banner))
    new_source = _with_container(module, inserted).code

    compile(new_source, "<test>", "exec")
    namespace: dict[str, object] = {}
    if kind != "import":
        exec(new_source, namespace)
        values = list(namespace["x"])  # type: ignore[call-overload]
        assert values.index("new") == index
    # only lines were added, each existing line kept as it was (trailing comments stay on their line); without
    # a trailing comma, appending must add one to the old last element
    old_lines, new_lines = source.splitlines(), new_source.splitlines()
    added = [line for line in new_lines if line not in old_lines]
    changed_last = 1 if (index == size and not source_has_trailing_comma(source)) else 0
    assert len(new_lines) == len(old_lines) + len(added) - changed_last
    assert all("new" in line.lower() or "banner" in line for line in added[changed_last:])
    removed = _cst.remove_item(inserted, index, drop_comments=len(banner))
    assert _with_container(module, removed).code == source


@pytest.mark.parametrize(
    "source, index, expected",
    [
        ("from m import A, C\n", 1, "from m import A, B, C\n"),
        ("from m import A, C\n", 2, "from m import A, C, B\n"),
        ("from m import A, C\n", 0, "from m import B, A, C\n"),
        ("x = [1, 2]\n", 2, "x = [1, 2, B]\n"),
    ],
)
def test_single_line_sequences(source: str, index: int, expected: str):
    module = cst.parse_module(source)
    node = _container(module)
    item = cst.ImportAlias(name=cst.Name("B")) if isinstance(node, cst.ImportFrom) else _cst.element("B")
    new = _with_container(module, _cst.insert_item(node, index, item)).code
    assert new == expected
    assert _with_container(module, _cst.remove_item(_container(cst.parse_module(new)), index)).code == source


def test_comment_lines_stay_above_their_element():
    source = 'x = [\n    "a",  # about a\n    # about c\n    "c",\n]\n'
    module = cst.parse_module(source)
    new = _with_container(module, _cst.insert_item(_container(module), 1, _cst.element('"b"'))).code
    assert new == 'x = [\n    "a",  # about a\n    "b",\n    # about c\n    "c",\n]\n'


# -- sort orders: PEFT's own sorted lists are sorted under the keys ----------------------------------------------------


@pytest.mark.parametrize(
    "relpath, module, level",
    [
        ("src/peft/__init__.py", "tuners", 1),
        ("src/peft/utils/other.py", "constants", 1),
        ("src/peft/utils/__init__.py", "other", 1),
        ("tests/test_custom_models.py", "peft", 0),
    ],
)
def test_import_name_key_matches_peft_imports(relpath: str, module: str, level: int, peft_sdist: Path):
    names = t.imported_names(_cst.parse(read_text(peft_sdist / relpath), relpath), level, module)
    assert len(names) > 10
    assert names == sorted(names, key=_cst.import_name_key)


@pytest.mark.parametrize(
    "relpath", ["src/peft/__init__.py", "src/peft/tuners/__init__.py", "src/peft/utils/__init__.py"]
)
def test_dunder_all_key_matches_peft(relpath: str, peft_sdist: Path):
    names = t.dunder_all_names(_cst.parse(read_text(peft_sdist / relpath), relpath))
    assert names == sorted(names, key=_cst.dunder_all_key)


def test_module_key_matches_peft_tuner_imports(peft_sdist: Path):
    tree = _cst.parse(read_text(peft_sdist / "src/peft/tuners/__init__.py"), "x")
    modules = [mod for _, mod in t._sibling_imports(tree.body)]
    assert modules == sorted(modules, key=_cst.module_key)


def test_insertion_index():
    assert _cst.insertion_index(["a", "c"], "b", str) == 1
    assert _cst.insertion_index(["c", "a"], "b", str) == 2  # unsorted: append
    assert _cst.insertion_index([], "b", str) == 0


# -- literals --------------------------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.booleans(),
    st.none(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=30),
)
kwargs_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text("abc_", max_size=8), inner, max_size=4),
    max_leaves=12,
)
rows = st.tuples(
    st.text("abcdefgh MLP", min_size=1, max_size=60),
    st.sampled_from(["MLP", "EmbConv1D", "Conv2d"]),
    st.dictionaries(st.from_regex(r"[a-z_]{1,20}", fullmatch=True), kwargs_values, max_size=6),
)


@settings(max_examples=60, deadline=None)
@given(row=rows)
def test_literal_rows_round_trip(row):
    desc, model_id, kwargs = row
    text = t.literal_row((desc, model_id, _cst.Code("SomeConfig"), kwargs))
    value = eval(text, {"SomeConfig": "SomeConfig"})
    assert value == (desc, model_id, "SomeConfig", kwargs)
    assert all(len(line) <= _cst.LINE_LENGTH for line in text.splitlines() if len(line.strip()) < 60)


def test_literal_rows_are_ruff_formatted(tmp_path: Path, peft_sdist: Path):
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff not installed next to the interpreter")
    samples = [
        ("short", "MLP", {"target_modules": "lin0"}),
        ("a long description " * 3, "MLP", {"target_modules": ["lin0", "lin1"], "r": 8, "init_weights": False}),
        ("nested", "Conv2d", {"target_modules": ["conv2d"], "layers": {"a": [1, 2, 3] * 12, "b": "x" * 90}}),
        ("quotes", "MLP", {"pattern": 'it\'s "quoted"', "other": "single ' only", "e": 1e-08, "n": None}),
    ]
    body = "".join("    " + t.literal_row((d, m, _cst.Code("Cfg"), k)) + ",\n" for d, m, k in samples)
    mapping = _cst.format_literal({"llama": ["q_proj", "v_proj"], "gpt2": "c_attn"}, 0, explode=True)
    (tmp_path / "pyproject.toml").write_bytes((peft_sdist / "pyproject.toml").read_bytes())
    (tmp_path / "rows.py").write_text(f"Cfg = 1\nROWS = [\n{body}]\nMAPPING = {mapping}\n")
    proc = subprocess.run(
        [ruff, "format", "--check", "--diff", "rows.py"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout


def test_unsupported_literal_is_refused():
    with pytest.raises(TypeError, match="cannot write set values"):
        _cst.flat_literal({1, 2})
