"""Property tests: whatever document or `--set` string the recipe loader is handed, it returns a
`Recipe` or raises `UserError` (one line); never anything else.

Documents are random nested mappings, lists and scalars, random YAML text, and mutations of the
bundled recipes (a key dropped, a value swapped for another type, a key added, a string garbled).
Runs are derandomized (the same examples on every run, no example database written into the
working directory) and kept to a few hundred examples each.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelquant.errors import UserError
from modelquant.recipe import Recipe, load_recipe

BUNDLED = sorted((Path(__file__).resolve().parents[2] / "modelquant" / "recipes").glob("*.yaml"))

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Keys a recipe uses (so that random documents reach the validators, not only "unknown key").
KEYS = sorted(
    {
        *Recipe.model_fields,
        "factory", "checkpoint", "onnx", "hf", "task", "kwargs", "train", "validation",
        "calibration", "evaluation", "source", "split", "path", "samples", "batch_size",
        "labels", "inputs", "export", "quantize", "prune", "distill", "analyze", "opset",
        "precision", "mode", "overrides", "match", "sparsity", "method", "backends",
        "batch_sizes", "min_speedup", "max_accuracy_drop", "formats", "dir", "cpu", "npu",
        "cuda", "int4", "bits", "fp8", "teacher", "student", "finetune", "epochs",
    }
)  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["digits", "test", "train", "cpu", "int8", "re:(", "type:Conv", "../x"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3), st.none())
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """One folder for the recipe files every example writes (hypothesis reuses the test's
    arguments across examples, so a function-scoped tmp_path would be shared anyway)."""
    with tempfile.TemporaryDirectory(prefix="modelquant-fuzz-") as folder:
        yield Path(folder)


def loads_or_refuses(path: Path, overrides: list[str] | None = None) -> None:
    """The property: a Recipe, or a UserError of one line; any other exception fails the test."""
    try:
        recipe = load_recipe(path, overrides or [])
    except UserError as exc:
        message = str(exc)
        assert message.strip(), "an empty error message"
        assert "\n" not in message, message
        return
    assert isinstance(recipe, Recipe)


def write(folder: Path, text: str | bytes) -> Path:
    path = folder / "recipe.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@FUZZ
@given(doc=documents)
def test_random_documents(scratch: Path, doc: Any) -> None:
    loads_or_refuses(write(scratch, yaml.safe_dump(doc, allow_unicode=True)))


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_random_text(scratch: Path, text: str | bytes) -> None:
    loads_or_refuses(write(scratch, text))


# ---------------------------------------------------------------- mutations of real recipes


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a document (mapping keys and list indices)."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(BUNDLED_DOCS)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _parent(doc, path), path[-1]
        action = draw(st.sampled_from(["drop", "swap", "add", "garble"]))
        if action == "drop":
            del parent[last]
        elif action == "swap":
            parent[last] = draw(documents)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(documents)
        elif action == "add":
            parent.insert(last, draw(documents))
        else:
            parent[last] = draw(st.text(max_size=10)) + str(parent[last])[:10]
    return doc


BUNDLED_DOCS = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in BUNDLED]


def test_the_bundled_recipes_load() -> None:
    """The seeds of the mutations are valid recipes (else every mutation is trivially refused)."""
    assert len(BUNDLED) >= 5
    for path in BUNDLED:
        assert isinstance(load_recipe(path), Recipe)


@FUZZ
@given(doc=mutated())
def test_mutated_bundled_recipes(scratch: Path, doc: Any) -> None:
    loads_or_refuses(write(scratch, yaml.safe_dump(doc, allow_unicode=True)))


# ---------------------------------------------------------------- --set strings

# List indices as users type them, and strings that look like digits to str.isdigit() without
# being ASCII numbers ("²", "١").
indices = st.one_of(
    st.integers(0, 3).map(str), st.text(st.characters(categories=("Nd", "No")), min_size=1)
)
set_keys = st.lists(
    st.one_of(st.sampled_from(KEYS), st.text(max_size=6), indices), min_size=1, max_size=4
).map(".".join)
set_values = st.one_of(
    st.text(max_size=20), scalars.map(lambda v: yaml.safe_dump(v).removesuffix("\n...\n"))
)
set_strings = st.one_of(
    st.text(max_size=40), st.tuples(set_keys, set_values).map(lambda kv: f"{kv[0]}={kv[1]}")
)


@FUZZ
@given(recipe=st.sampled_from(BUNDLED), overrides=st.lists(set_strings, min_size=1, max_size=3))
def test_random_set_strings(recipe: Path, overrides: list[str]) -> None:
    loads_or_refuses(recipe, overrides)
