"""`compress --resume` reuses the finished stages whose content key matches and says so; a
changed setting reruns from its stage on; an output folder belongs to one recipe (`--force`,
`--resume` take another's over)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import Result

from modelquant.pipeline.ownership import MARKER
from tests.conftest import tiny_recipe_dict
from tests.robustness.conftest import compress, last_line

PIPELINE = [
    {"prune": {"method": "magnitude", "sparsity": 0.5, "finetune": {"epochs": 1}}},
    {"export": {"opset": 17}},
    {"quantize": {"precision": "int8"}},
]
STAGE_LINE = re.compile(r"stage (\d) (\w+): (running|cached|reused from the earlier run)")


def _stages(result: Result) -> list[str]:
    """`1 prune running`, `2 export reused from the earlier run`, ... in order."""
    return [" ".join(m.groups()) for m in STAGE_LINE.finditer(result.output)]


@pytest.fixture
def named_recipe(tmp_path: Path, tiny_checkpoint: Path) -> Callable[..., Path]:
    """named_recipe(file, recipe_name, **changes) -> a recipe file whose `name` is recipe_name."""

    def write(file: str, recipe_name: str, **changes: object) -> Path:
        doc = tiny_recipe_dict(tiny_checkpoint, **changes)
        doc["name"] = recipe_name
        path = tmp_path / file
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


def _accuracy(out: Path) -> float:
    return float(json.loads((out / "report.json").read_text())["compressed"]["accuracy"])


def test_resume_reuses_every_finished_stage_and_says_so(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    """Magnitude pruning re-registers each weight after its bias: the module rebuilt from the
    cache must hash like the one the stage made, or export and quantize rerun on every resume."""
    recipe = write_recipe(stages=PIPELINE)
    out = tmp_path / "out"
    first = compress(recipe, out)
    assert first.exit_code == 0, first.output
    assert _stages(first) == ["1 prune running", "2 export running", "3 quantize running"]
    accuracy = _accuracy(out)

    resumed = compress(recipe, out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert _stages(resumed) == [
        "1 prune reused from the earlier run",
        "2 export reused from the earlier run",
        "3 quantize reused from the earlier run",
    ]
    keys = re.findall(r"reused from the earlier run \(key ([0-9a-f]{8})\)", resumed.output)
    assert len(keys) == 3
    assert "resume: reused 3 of 3 stage(s) (1, 2, 3)" in resumed.output
    assert _accuracy(out) == accuracy


def test_a_changed_setting_reruns_from_its_stage_on(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(stages=PIPELINE)
    out = tmp_path / "out"
    assert compress(recipe, out).exit_code == 0

    late = compress(recipe, out, "--resume", "--set", "stages.2.quantize.per_channel=false")
    assert late.exit_code == 0, late.output
    assert _stages(late) == [
        "1 prune reused from the earlier run",
        "2 export reused from the earlier run",
        "3 quantize running",
    ]
    assert "the recipe changed since the run in" in late.output

    # The keys chain: a change in the first stage reruns every stage after it too.
    early = compress(recipe, out, "--resume", "--set", "stages.0.prune.sparsity=0.4")
    assert early.exit_code == 0, early.output
    assert _stages(early) == ["1 prune running", "2 export running", "3 quantize running"]
    assert "resume: no finished stage matched; all 3 stage(s) ran" in early.output


def test_resume_in_an_empty_folder_says_there_is_nothing_to_resume(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    result = compress(write_recipe(), tmp_path / "new", "--resume")
    assert result.exit_code == 0, result.output
    assert "resume: nothing to resume in" in result.output
    assert _stages(result) == ["1 export running", "2 quantize running"]


def test_plain_rerun_reuses_the_cache_and_says_cached(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    """Without --resume the content-addressed cache is still used (safe: a key is everything a
    stage reads); the console says `cached`."""
    recipe = write_recipe()
    out = tmp_path / "out"
    assert compress(recipe, out).exit_code == 0
    again = compress(recipe, out)
    assert again.exit_code == 0, again.output
    assert _stages(again) == ["1 export cached", "2 quantize cached"]
    assert "resume:" not in again.output


# ---------------------------------------------------------------- who owns the output folder


def test_another_recipes_folder_is_refused_and_left_as_it_is(
    write_recipe: Callable[..., Path], tmp_path: Path, named_recipe: Callable[..., Path]
) -> None:
    out = tmp_path / "out"
    assert compress(write_recipe(name="a.yaml"), out).exit_code == 0
    before = sorted(p.name for p in out.iterdir())
    other = named_recipe("b.yaml", "other")
    result = compress(other, out)
    assert result.exit_code == 2, result.output
    line = last_line(result)
    assert "holds a run of another recipe, 'tiny'" in line
    assert "--force" in line and "--resume" in line
    assert sorted(p.name for p in out.iterdir()) == before  # its report survives
    assert json.loads((out / MARKER).read_text())["recipe"] == "tiny"


def test_force_takes_the_folder_over(
    write_recipe: Callable[..., Path], tmp_path: Path, named_recipe: Callable[..., Path]
) -> None:
    out = tmp_path / "out"
    assert compress(write_recipe(name="a.yaml"), out).exit_code == 0
    assert (out / "model.int8.onnx").is_file()
    other = named_recipe("b.yaml", "other", stages=[{"export": {"opset": 17}}])
    result = compress(other, out, "--force")
    assert result.exit_code == 0, result.output
    marker = json.loads((out / MARKER).read_text())
    assert marker["recipe"] == "other" and marker["recipe_path"] == str(other.resolve())
    assert "report.json" in marker["artifacts"]
    assert json.loads((out / "report.json").read_text())["recipe"]["name"] == "other"
    # The first recipe's quantized model went with it; this run published its own.
    published = {p.name for p in out.iterdir() if p.suffix == ".onnx"}
    assert published == {"baseline.onnx", "model.fp32.onnx"}


def test_resume_takes_another_recipes_folder_over_and_reuses_matching_stages(
    write_recipe: Callable[..., Path], tmp_path: Path, named_recipe: Callable[..., Path]
) -> None:
    out = tmp_path / "out"
    assert compress(write_recipe(name="a.yaml"), out).exit_code == 0
    other = named_recipe("b.yaml", "other")  # the same stages, another name
    result = compress(other, out, "--resume")
    assert result.exit_code == 0, result.output
    assert "taking" in result.output and "from recipe 'tiny'" in result.output
    assert _stages(result) == [
        "1 export reused from the earlier run",
        "2 quantize reused from the earlier run",
    ]


def test_the_same_recipe_moved_or_edited_is_still_its_folder(
    write_recipe: Callable[..., Path], tmp_path: Path, named_recipe: Callable[..., Path]
) -> None:
    out = tmp_path / "out"
    assert compress(write_recipe(name="a.yaml"), out).exit_code == 0
    moved = write_recipe(name="copy.yaml")  # same name, another file
    assert compress(moved, out).exit_code == 0
    renamed = named_recipe("copy.yaml", "renamed")  # same file, new name
    result = compress(renamed, out)
    assert result.exit_code == 0, result.output


def test_an_output_folder_that_is_a_file_is_bad_input(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    target = tmp_path / "out"
    target.write_text("not a folder")
    result = compress(write_recipe(), target)
    assert result.exit_code == 2, result.output
    assert "is a file; give --out a folder" in last_line(result)
    assert target.read_text() == "not a folder"


def test_an_existing_empty_folder_is_fine(
    write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = compress(write_recipe(), out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / MARKER).read_text())["recipe"] == "tiny"
