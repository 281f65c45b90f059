"""Two gloo ranks launched the way torchrun launches them: the same weights on both after
training, files from rank 0 only, the exit code agreed, gradient compression and FSDP, and a rank
that dies or fails mid-epoch ending the run with exit 3 and a line naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import tiny_recipe_dict
from tests.distributed.launch import Rank, launch

pytestmark = pytest.mark.slow  # two Python processes with torch each: ~10-20 s per launch

CHILD = ["-m", "tests.distributed.child"]


def distill_recipe(tmp_path: Path, checkpoint: Path, **distributed: Any) -> Path:
    """The tiny CNN distilled into its half-width twin for one epoch, exported, INT8."""
    recipe = tiny_recipe_dict(
        checkpoint,
        stages=[
            {
                "distill": {
                    "student": {"factory": "tests.tiny_models:build_half"},
                    "finetune": {"epochs": 1, "lr": 0.01, "batch_size": 64},
                }
            },
            {"export": {"opset": 17}},
            {"quantize": {"precision": "int8", "mode": "static"}},
        ],
        gates={},
        train={"distributed": {"timeout_s": 60, **distributed}},
    )
    recipe["data"]["validation"] = {"source": "digits", "split": "val"}
    recipe["evaluate"].update(batch_sizes=[1], repeats=5, block=5)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def said(rank: Rank) -> str:
    """What a rank said last, C++ warnings of torch's store left out."""
    lines = [
        line
        for line in rank.lines
        if not line.startswith(("[W", "[rank", "frame #", "Exception raised", "<omitting"))
    ]
    return lines[-1] if lines else ""


def test_two_ranks_train_the_same_weights_and_only_rank_0_writes(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    recipe = distill_recipe(tmp_path, tiny_checkpoint)
    for rank in (0, 1):  # each rank its own output folder, temp folder and working directory
        for name in ("tmp", "cwd", "dump"):
            (tmp_path / f"{name}{rank}").mkdir()

    def run() -> list[Rank]:
        return launch(
            [*CHILD, "compress", str(recipe), "--out", str(tmp_path / "out{rank}")],
            cwd=[tmp_path / "cwd0", tmp_path / "cwd1"],
            per_rank_env=[
                {
                    "TMPDIR": str(tmp_path / f"tmp{r}"),
                    "MQ_TEST_DUMP": str(tmp_path / f"dump{r}"),
                    "MQ_TEST_AUDIT": str(tmp_path / f"audit{r}.json"),
                }
                for r in (0, 1)
            ],
        )

    ranks = run()
    assert [r.code for r in ranks] == [0, 0], [r.stderr[-2000:] for r in ranks]

    # The student after its epoch: the same on both ranks, and trained (not the fresh one).
    from tests.tiny_models import build_half

    rank0 = tensors(tmp_path / "dump0" / "rank0-1.safetensors")
    rank1 = tensors(tmp_path / "dump1" / "rank1-1.safetensors")
    assert same(rank0, rank1)
    assert not same(rank0, dict(build_half().state_dict()))

    report = json.loads((tmp_path / "out0" / "report.json").read_text())
    assert report["environment"]["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "strategy": "ddp",
        "gradient_compression": "none",
        "per_rank_batch_size": [32],
    }
    dp = report["stages"][0]["details"]["data_parallel"]
    assert (dp["global_batch_size"], dp["per_rank_batch_size"]) == (64, 32)

    # Rank 1 wrote nothing: no output folder, nothing in its working directory, its temp
    # folders gone, and every file it opened for writing (Python's audit hook) was in them.
    assert not (tmp_path / "out1").exists()
    assert list((tmp_path / "cwd1").iterdir()) == []
    assert list((tmp_path / "tmp1").iterdir()) == []
    written = json.loads((tmp_path / "audit1.json").read_text())
    torch_own = ("/dev/null", "torchinductor_")  # torch itself, on every rank, at import
    elsewhere = [p for p in written if not p.startswith(str(tmp_path / "tmp1"))]
    assert [p for p in elsewhere if not any(t in p for t in torch_own)] == []
    assert any(str(tmp_path / "tmp1") in p for p in written)  # the audit saw rank 1's work
    assert not [p for p in (tmp_path / "out0").rglob("*") if p.name.endswith(".partial")]

    # Again: rank 0's cache entry decides for both; rank 1 (whose output folder has none) takes
    # rank 0's over the process group, and neither trains.
    for dump in ("dump0", "dump1"):
        for path in (tmp_path / dump).iterdir():
            path.unlink()
    again = run()
    assert [r.code for r in again] == [0, 0], [r.stderr[-2000:] for r in again]
    assert "stage 1 distill: cached" in again[0].stderr
    assert list((tmp_path / "dump0").iterdir()) == list((tmp_path / "dump1").iterdir()) == []
    assert not (tmp_path / "out1").exists()
    assert list((tmp_path / "tmp1").iterdir()) == []


def test_gradient_compression_fsdp_and_unused_parameters_keep_ranks_identical(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    kinds = ["none", "fp16", "bf16", "int8", "powersgd", "fsdp", "unused"]
    ranks = launch(
        [*CHILD, "train", str(tmp_path), str(tiny_checkpoint), *kinds],
        env={"MQ_TEST_EPOCHS": "3"},
    )
    assert [r.code for r in ranks] == [0, 0], [r.stderr[-2000:] for r in ranks]
    docs = {k: json.loads((tmp_path / f"rank0-{k}.json").read_text()) for k in kinds}
    for kind in kinds:
        assert same(
            tensors(tmp_path / f"rank0-{kind}.safetensors"),
            tensors(tmp_path / f"rank1-{kind}.safetensors"),
        ), kind
    plain = docs["none"]["accuracy"]
    assert plain > 0.85
    for kind in ("fp16", "bf16", "int8", "fsdp", "unused"):  # 450 test images: 1 pt is 4.5
        assert abs(docs[kind]["accuracy"] - plain) <= 0.02, (kind, docs[kind]["accuracy"], plain)
    assert docs["powersgd"]["accuracy"] > 0.5  # rank-1 PowerSGD learns, more slowly
    sent = {k: docs[k]["data_parallel"]["sent_bytes_per_step"] for k in kinds[:5]}
    full = docs["none"]["data_parallel"]["gradient_bytes_per_step"]
    assert sent["none"] == full
    assert sent["fp16"] == sent["bf16"] == full // 2
    assert sent["int8"] < 0.27 * full
    assert sent["powersgd"] < sent["int8"]
    assert docs["fsdp"]["data_parallel"]["strategy"] == "fsdp"


@pytest.mark.parametrize(
    ("stop", "codes", "rank0_says"),
    [
        ("1:3:kill", [3, 9], "rank 1 of 2 stopped responding"),
        ("1:3:raise", [3, 3], "rank 1 of 2 failed: ValueError: injected failure at step 3"),
    ],
)
def test_a_rank_that_dies_or_fails_mid_epoch_ends_the_run_with_exit_3_naming_it(
    tmp_path: Path, tiny_checkpoint: Path, stop: str, codes: list[int], rank0_says: str
) -> None:
    recipe = distill_recipe(tmp_path, tiny_checkpoint)
    ranks = launch(
        [*CHILD, "compress", str(recipe), "--out", str(tmp_path / "out")],
        env={"MQ_TEST_STOP": stop},
        timeout=120,  # well within the recipe's timeout_s (60) plus start-up
    )
    assert [r.code for r in ranks] == codes, [r.stderr[-2000:] for r in ranks]
    assert said(ranks[0]).startswith("stage failed: stage 'distill': ")
    assert rank0_says in said(ranks[0])
    if stop.endswith("raise"):
        assert said(ranks[1]).startswith("rank 1: stage failed: stage 'distill': ValueError")
    assert not (tmp_path / "out" / "report.json").exists()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".partial")]


def test_rank_0_failing_mid_epoch_ends_rank_1_with_exit_3(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    recipe = distill_recipe(tmp_path, tiny_checkpoint)
    ranks = launch(
        [*CHILD, "compress", str(recipe), "--out", str(tmp_path / "out")],
        env={"MQ_TEST_STOP": "0:3:raise"},
        timeout=120,
    )
    assert [r.code for r in ranks] == [3, 3], [r.stderr[-2000:] for r in ranks]
    assert said(ranks[0]) == "stage failed: stage 'distill': ValueError: injected failure at step 3"
    # Rank 1 reads rank 0's failure in the store and stays silent (rank 0 spoke), or, when rank 0
    # had already gone with the store it held (a plain launch), says so: inside the distill stage
    # or, when it saw the failure only afterwards, while waiting for rank 0's verdict.
    last = said(ranks[1])
    assert (
        last == ""
        or last.startswith("rank 1: stage failed: stage 'distill': rank 0 of 2 ended")
        or last.startswith("rank 1: stage failed: rank 0 of 2 ended before it said how the run")
    ), last


def test_a_gate_failure_on_rank_0_is_every_rank_s_exit_code(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    recipe = distill_recipe(tmp_path, tiny_checkpoint)
    ranks = launch(
        [
            *CHILD,
            "compress",
            str(recipe),
            "--out",
            str(tmp_path / "out"),
            "--set",
            "gates.max_accuracy_drop=0.0001",
        ],  # fmt: skip
    )
    assert [r.code for r in ranks] == [1, 1], [r.stderr[-2000:] for r in ranks]
    assert said(ranks[0]).startswith("gate failed:")
    assert said(ranks[1]) == ""  # rank 0 speaks for the run
