"""Recipe loading: validation messages with file:line and suggestions, overrides, schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelquant.errors import UserError
from modelquant.recipe import load_recipe, recipe_json_schema

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
name: t
model: {factory: "tests.tiny_models:build"}
data:
  evaluation: {source: digits, split: test}
stages:
  - export: {opset: 17}
  - quantize:
      precision: int8
      calibration: {method: percentile, percentile: 99.99}
      overrides: [{match: "re:classifier.*", precision: fp32}]
gates: {max_accuracy_drop: 0.01, min_speedup: {cpu: 1.2}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_good_recipe_loads_with_typed_stages(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, GOOD))
    names = [name for name, _ in recipe.stage_list()]
    assert names == ["export", "quantize"]
    quant = recipe.stage_list()[1][1]
    assert quant.calibration.method == "percentile"  # type: ignore[attr-defined]
    assert recipe.gates.min_speedup == {"cpu": 1.2}


def test_validation_data_takes_the_val_split(tmp_path: Path) -> None:
    text = GOOD.replace("data:\n", "data:\n  validation: {source: digits, split: val}\n")
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.data.validation is not None and recipe.data.validation.split == "val"


def test_misspelled_key_names_line_and_suggestion(tmp_path: Path) -> None:
    text = GOOD.replace("calibration: {method", "calibraton: {method")
    with pytest.raises(UserError) as err:
        load_recipe(write(tmp_path, text))
    msg = str(err.value)
    assert "unknown key 'calibraton'" in msg
    assert "r.yaml:9" in msg
    assert "did you mean 'calibration'?" in msg


def test_misspelled_top_level_key(tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"unknown key 'gatess' at .*r.yaml:11; did you mean 'gates'"
    ):
        load_recipe(write(tmp_path, GOOD.replace("gates:", "gatess:")))


def test_unknown_stage_name(tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"unknown stage 'quantise' at .*r.yaml:7; did you mean 'quantize'"
    ):
        load_recipe(write(tmp_path, GOOD.replace("- quantize:", "- quantise:")))


def test_bad_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"stages\[1\]\.quantize\.calibration\.method.*r.yaml:9"):
        load_recipe(write(tmp_path, GOOD.replace("method: percentile", "method: magic")))


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"invalid YAML at .*r.yaml:\d+"):
        load_recipe(write(tmp_path, GOOD + "oops: [unclosed\n"))


def test_missing_required_key(tmp_path: Path) -> None:
    text = GOOD.replace("data:\n  evaluation: {source: digits, split: test}\n", "")
    with pytest.raises(UserError, match="missing required key 'data'"):
        load_recipe(write(tmp_path, text))


def test_gate_on_unmeasured_backend_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not measure"):
        load_recipe(write(tmp_path, GOOD), ["gates.min_speedup.gpu=2"])


def test_overrides_coerce_types(tmp_path: Path) -> None:
    recipe = load_recipe(
        write(tmp_path, GOOD),
        ["gates.min_speedup.cpu=100", "stages.1.quantize.per_channel=false", "seed=7"],
    )
    assert recipe.gates.min_speedup["cpu"] == 100.0
    assert recipe.stage_list()[1][1].per_channel is False  # type: ignore[attr-defined]
    assert recipe.seed == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nonsense", "key.path=value"),
        ("stages.9.quantize.per_channel=false", "not an index"),
        ("evaluate.repeats=many", "evaluate.repeats"),
        ("gates.max_size_ratoi=0.5", "did you mean 'max_size_ratio'"),
    ],
)
def test_bad_overrides_are_user_errors(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_recipe(write(tmp_path, GOOD), [override])


def test_schema_lists_every_stage() -> None:
    schema = recipe_json_schema()
    text = str(schema)
    for stage in ("export", "quantize"):
        assert f"Stage_{stage}" in text
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.stages, "a shipped recipe runs at least one stage"


def test_shipped_recipes_exist() -> None:
    assert list((REPO / "recipes").glob("*.yaml")), "recipes/ holds ready recipes"
