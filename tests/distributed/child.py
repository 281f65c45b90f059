"""One rank of a test launch (`tests.distributed.launch`), test-only instrumentation included.

`python -m tests.distributed.child compress ARGS...` runs `modelquant compress ARGS` with, from the
environment (all optional, all test-only):
- MQ_TEST_DUMP=DIR: every trained model's weights and buffers, after training, as
  DIR/rank<r>-<n>.safetensors (n counts the training runs of this process);
- MQ_TEST_AUDIT=FILE: the paths this process opened for writing, renamed, made or removed, as
  seen by Python's audit hooks, written as JSON to FILE at exit;
- MQ_TEST_STOP=RANK:STEP:HOW: rank RANK, at training step STEP, dies at once (`kill`: os._exit,
  as a SIGKILL would end it) or raises an error (`raise`).

`python -m tests.distributed.child train OUT CHECKPOINT KIND...` trains a fresh tiny CNN on digits
(MQ_TEST_EPOCHS epochs, default 1) with each gradient compression KIND (or `fsdp`, or `unused`: a
parameter no loss reaches) and writes
OUT/rank<r>-<KIND>.safetensors plus OUT/rank<r>-<KIND>.json (test accuracy, data-parallel
details). CHECKPOINT is the tiny recipe's model (its data checks need one).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path
from typing import Any


def _audit(target: Path) -> None:
    written: list[str] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if writes and isinstance(path, str | bytes | os.PathLike):
                written.append(os.fsdecode(path))
        elif event in ("os.rename", "os.replace", "os.mkdir", "os.remove", "os.rmdir"):
            written.append(os.fsdecode(args[0]))
        elif event == "shutil.rmtree":
            written.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)

    def save() -> None:
        target.write_text(json.dumps([p for p in written if p != str(target)]))

    atexit.register(save)


def _instrument() -> None:
    from modelquant import distributed

    rank = int(os.environ.get("RANK", "0"))
    dump = os.environ.get("MQ_TEST_DUMP")
    stop = os.environ.get("MQ_TEST_STOP")
    if dump:
        finish = distributed.DataParallel.finish
        runs = [0]

        def dumping(self: distributed.DataParallel) -> None:
            from safetensors.torch import save_file

            finish(self)
            runs[0] += 1
            tensors = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            save_file(tensors, str(Path(dump) / f"rank{rank}-{runs[0]}.safetensors"))

        distributed.DataParallel.finish = dumping  # type: ignore[method-assign]
    if stop:
        who, at, how = stop.split(":")
        if int(who) == rank:
            sync = distributed.DataParallel.sync
            steps = [0]

            def stopping(self: distributed.DataParallel, extra: Any = ()) -> None:
                steps[0] += 1
                if steps[0] == int(at):
                    if how == "kill":
                        os._exit(9)
                    raise ValueError(f"injected failure at step {at}")
                sync(self, extra)

            distributed.DataParallel.sync = stopping  # type: ignore[method-assign]


def _train(out: Path, checkpoint: Path, kinds: list[str]) -> None:
    """One epoch of the tiny CNN per kind, under the launch's process group."""
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from modelquant import distributed
    from modelquant.pipeline import Pipeline
    from modelquant.recipe import Recipe
    from modelquant.stages.finetune import FinetuneConfig, accuracy, finetune
    from modelquant.state import ModelState
    from tests.conftest import tiny_recipe_dict
    from tests.tiny_models import build

    recipe = Recipe.model_validate(tiny_recipe_dict(checkpoint))
    world = distributed.start(distributed.DistributedConfig())
    assert world is not None
    pipeline = Pipeline(recipe, out / "recipe.yaml", out)
    for kind in kinds:
        if kind == "fsdp":
            cfg = distributed.DistributedConfig(strategy="fsdp")
        elif kind == "unused":  # a parameter no loss reaches, like a Hugging Face pooler
            cfg = distributed.DistributedConfig()
        else:
            cfg = distributed.DistributedConfig(gradient_compression=kind)  # type: ignore[arg-type]
        model = build(8, 32)
        if kind == "unused":
            model.spare = torch.nn.Linear(3, 3)
        ctx = dataclasses.replace(
            pipeline.context(ModelState(module=model)),
            world=dataclasses.replace(world, config=cfg),
            details={},
        )
        finetune(
            model,
            ctx,
            FinetuneConfig(
                epochs=int(os.environ.get("MQ_TEST_EPOCHS", "1")), lr=0.01, batch_size=64
            ),
            label=kind,
        )
        tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
        save_file(tensors, str(out / f"rank{world.rank}-{kind}.safetensors"))
        doc = {
            "accuracy": accuracy(model, pipeline.plan.data("evaluation")),
            "data_parallel": ctx.details.get("data_parallel"),
        }
        (out / f"rank{world.rank}-{kind}.json").write_text(json.dumps(doc))
    distributed.conclude(0, None, None)


def main() -> None:
    mode, *rest = sys.argv[1:]
    if mode == "train":
        _train(Path(rest[0]), Path(rest[1]), rest[2:])
        return
    audit = os.environ.get("MQ_TEST_AUDIT")
    if audit:
        _audit(Path(audit))
    _instrument()
    from modelquant.cli import main as cli

    sys.argv = ["modelquant", mode, *rest]
    cli()


if __name__ == "__main__":
    main()
