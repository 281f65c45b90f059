"""Data parallelism in one process: what a single process trains is unchanged, the shards ranks
read, the int8 gradient encoding, the recipe's `train.distributed` settings, joining a launch
(bad input before anyone waits), and the cache key of a stage trained by several ranks."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from modelquant import distributed
from modelquant.cli import app
from modelquant.distributed import DistributedConfig, World
from modelquant.errors import UserError
from modelquant.recipe import load_recipe


def test_one_process_trains_on_the_same_seeded_batches_as_before() -> None:
    from modelquant.stages.finetune import epoch_batches

    model = torch.nn.Linear(2, 2)
    dp = distributed.DataParallel(model, None, batch_size=64, seed=7, samples=100)
    rng = torch.Generator().manual_seed(7)
    lengths = torch.randint(1, 20, (100,), generator=torch.Generator().manual_seed(1))
    assert dp.module is model and dp.batch_size == 64 and dp.steps_per_epoch == 2
    for epoch in range(3):  # one generator seeded once, epoch after epoch
        want = epoch_batches(100, 64, rng, lengths if epoch else None)
        got = dp.epoch_batches(epoch, lengths if epoch else None)
        assert [b.tolist() for b in got] == [b.tolist() for b in want]
    assert dp.details() is None
    assert dp.mean(30.0, 100) == pytest.approx(0.3)


def test_ranks_read_disjoint_shards_that_cover_the_data_and_change_every_epoch() -> None:
    def shards(epoch: int) -> list[list[int]]:
        return [
            distributed.epoch_shard(distributed.sampler(10, 3, rank, 2), epoch).tolist()
            for rank in (0, 1)
        ]

    first = shards(0)
    assert sorted(first[0] + first[1]) == list(range(10))
    assert len(first[0]) == len(first[1]) == 5
    assert shards(0) == first  # seeded
    assert shards(1) != first
    odd = [distributed.epoch_shard(distributed.sampler(11, 3, r, 2), 0).tolist() for r in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == 6  # padded: every rank takes as many steps
    assert set(odd[0] + odd[1]) == set(range(11))


@pytest.mark.parametrize("count", [1, 255, 256, 1000])
def test_int8_gradients_decode_within_half_a_step_of_each_chunk(count: int) -> None:
    values = torch.randn(count, generator=torch.Generator().manual_seed(count)) * 1e-3
    values[0] = 0.05  # one large value: only its own chunk gets a coarse scale
    payload = distributed.int8_encode(values)
    assert payload.dtype == torch.int8
    assert payload.numel() == distributed.int8_bytes(count)
    decoded = distributed.int8_decode(payload, count)
    chunk = distributed.INT8_CHUNK
    for start in range(0, count, chunk):
        part = values[start : start + chunk]
        step = float(part.abs().max()) / 127
        assert float((decoded[start : start + chunk] - part).abs().max()) <= step / 2 + 1e-12
    assert torch.equal(
        distributed.int8_decode(distributed.int8_encode(torch.zeros(5)), 5), torch.zeros(5)
    )


def test_the_recipe_takes_a_train_section_and_rejects_what_cannot_work(
    write_recipe: Any,
) -> None:
    recipe = write_recipe()
    spec = load_recipe(recipe, ["train.distributed.gradient_compression=int8"])
    assert spec.train.distributed.gradient_compression == "int8"
    assert load_recipe(recipe).train.distributed == DistributedConfig()
    with pytest.raises(UserError, match="use strategy ddp"):
        load_recipe(
            recipe,
            ["train.distributed.strategy=fsdp", "train.distributed.gradient_compression=int8"],
        )
    with pytest.raises(UserError, match="gradient_compression"):
        load_recipe(recipe, ["train.distributed.compression=int8"])


@pytest.mark.parametrize(
    ("env", "settings", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0"}, {"backend": "nccl"}, "use backend gloo"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, {}, "MASTER_ADDR is not: launch with torchrun"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, {}, "RANK 2 is outside WORLD_SIZE 2"),
        ({"WORLD_SIZE": "two"}, {}, "must be integers"),
    ],
)
def test_joining_a_launch_with_bad_settings_is_bad_input(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], settings: dict[str, str], message: str
) -> None:
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=message):
        distributed.start(DistributedConfig.model_validate(settings))


def test_a_single_process_joins_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.start(DistributedConfig()) is None
    assert distributed.conclude(1, "gate failed: x", None) == (1, "gate failed: x")


def test_compress_under_a_bad_launch_exits_2_naming_the_fix(
    write_recipe: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    result = CliRunner().invoke(
        app, ["compress", str(write_recipe()), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2, result.output
    assert "launch with torchrun" in result.output


def test_a_torch_stage_trained_by_several_ranks_has_its_own_cache_key(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from modelquant.pipeline import Pipeline, cache
    from modelquant.recipe import Recipe
    from modelquant.stages import registered_stages
    from modelquant.state import ModelState
    from tests.conftest import tiny_recipe_dict

    pipeline = Pipeline(
        Recipe.model_validate(tiny_recipe_dict(tiny_checkpoint)), tmp_path / "r.yaml", tmp_path
    )
    ctx = pipeline.context(ModelState())
    two = dataclasses.replace(ctx, world=World(0, 2, 0, "gloo", DistributedConfig()))
    int8 = dataclasses.replace(
        ctx, world=World(0, 2, 0, "gloo", DistributedConfig(gradient_compression="int8"))
    )
    stages = registered_stages()
    distill = stages["distill"](stages["distill"].Config())
    quantize = stages["quantize"](stages["quantize"].Config())

    def key(stage: Any, c: Any) -> str:
        return cache.stage_key("prev", "input", stage, c, {})

    assert len({key(distill, ctx), key(distill, two), key(distill, int8)}) == 3
    assert key(quantize, ctx) == key(quantize, two)  # rank 0 alone quantizes


def test_a_rank_other_than_0_prints_only_its_errors_named_by_rank(
    write_recipe: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    bad = write_recipe(text="name: tiny\nbogus: 1\n")
    result = CliRunner().invoke(app, ["compress", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rank 1: bad input: "), result.output
