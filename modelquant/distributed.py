"""Data-parallel training under torchrun: the ranks, their process group, the DDP/FSDP wrap of a
student, the shard of the training data each rank reads, gradient compression (DDP communication
hooks, one int8 hook of our own), and how the ranks agree on failures and on the exit code.

`torchrun --nproc_per_node N -m modelquant compress RECIPE` starts N processes with `RANK`,
`WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` set. Every rank loads the recipe, the
model and the data and runs the torch stages (`distill`, `prune`) in lockstep, each training step
synchronised by DDP; only rank 0 (the leader) exports, quantizes, evaluates and writes. The other
ranks (followers) stop after the last torch stage and wait, through the rendezvous store (no
collective, so no timeout while rank 0 measures for minutes), for rank 0's exit code, which they
then exit with. A rank that fails posts its one-line error in the store before it exits; a rank
whose collective breaks reads the store to name the rank that failed, or, when a rank posted
nothing, the rank that stopped responding (killed, crashed, hung past `timeout_s`).

The process group is process-wide in torch; so is the one session here (`start`, `conclude`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelquant.errors import EXIT_STAGE_FAILED, StageError, UserError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DistributedSampler

Compression = Literal["none", "fp16", "bf16", "int8", "powersgd"]

GRACE_S = 5.0
"""After a broken collective, how long a rank waits for the others to say in the store whether
they failed or are alive, before it names the silent ones as stopped."""
ACK_S = 30.0
"""How long rank 0 waits for the followers to read its exit code before it exits (under a plain
launch it holds the store: leaving at once could take the code away before they read it)."""
INT8_CHUNK = 256
"""Gradient values per int8 scale in the int8 hook (one float32 scale per chunk)."""


class DistributedConfig(BaseModel):
    """How the torch stages train when launched by torchrun (ignored in a single process)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto",
        description="Process-group backend: auto (gloo: the trainer runs on the CPU), gloo, or "
        "nccl (refused: it needs CUDA tensors, and training runs on the CPU).",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every rank holds the whole student, gradients are averaged; fsdp: "
        "parameters, gradients and optimizer state sharded across ranks (torch's fully_shard, "
        "ZeRO-3), for students whose training state does not fit one process.",
    )
    gradient_compression: Compression = Field(
        "none",
        description="How DDP sends gradients: none (fp32 all-reduce), fp16 (torch's "
        "fp16_compress_hook), bf16 (a bf16 cast hook: torch's own needs NCCL), int8 (ours: a "
        "scale per 256 values, int8 all-gather, dequantize and average), powersgd (torch's "
        "PowerSGD, low-rank). ddp only.",
    )
    powersgd_rank: int = Field(
        1, ge=1, description="Rank of PowerSGD's low-rank approximation (powersgd only)."
    )
    timeout_s: float = Field(
        600.0,
        gt=0,
        description="How long a rank waits for the others at a collective (joining, a training "
        "step) before the run fails with exit 3 naming the rank that stopped responding.",
    )

    @model_validator(mode="after")
    def _fits_strategy(self) -> DistributedConfig:
        if self.strategy == "fsdp" and self.gradient_compression != "none":
            raise ValueError(
                f"gradient_compression {self.gradient_compression} works through DDP's "
                "communication hooks: use strategy ddp, or gradient_compression none with fsdp"
            )
        return self


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the ranks of a torchrun launch."""

    rank: int
    size: int
    local_rank: int
    backend: str
    config: DistributedConfig

    @property
    def leads(self) -> bool:
        """Rank 0: the one that exports, quantizes, evaluates and writes."""
        return self.rank == 0

    def key_parts(self) -> list[Any]:
        """What a stage trained under this world depends on beyond a single process's key."""
        cfg = self.config
        return [
            "data-parallel",
            self.size,
            cfg.strategy,
            cfg.gradient_compression,
            cfg.powersgd_rank if cfg.gradient_compression == "powersgd" else None,
        ]


def launched() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment; None in a single process."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1") or "1")
        rank = int(os.environ.get("RANK", "0") or "0")
        local = int(os.environ.get("LOCAL_RANK", "0") or "0")
    except ValueError:
        raise UserError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them); launch with "
            "torchrun, or unset them for a single process"
        ) from None
    if size <= 1:
        return None
    if not 0 <= rank < size:
        raise UserError(f"RANK {rank} is outside WORLD_SIZE {size}; launch with torchrun")
    return rank, size, local


@dataclasses.dataclass
class _Session:
    world: World
    store: Any
    prefix: str
    gone: set[int] = dataclasses.field(default_factory=set)
    """Ranks known to have failed or stopped: nobody waits for them."""

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def posted(self, name: str) -> str | None:
        if not self.store.check([self.key(name)]):
            return None
        return bytes(self.store.get(self.key(name))).decode("utf-8", "replace")


_SESSION: _Session | None = None


def start(cfg: DistributedConfig) -> World | None:
    """Join the other ranks (torchrun's environment) and return this rank's `World`; None when
    not launched by torchrun. Bad settings are bad input on every rank, before anyone waits."""
    global _SESSION
    where = launched()
    if where is None:
        return None
    import torch.distributed as dist

    rank, size, local = where
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run in a single process")
    if cfg.backend == "nccl":
        raise UserError(
            "train.distributed.backend nccl needs CUDA tensors, and modelquant trains on the "
            "CPU: use backend gloo (or auto)"
        )
    backend = "gloo"
    if not dist.is_gloo_available():
        raise UserError("this torch build has no gloo backend; run in a single process")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise UserError(
                f"WORLD_SIZE={size} is set but {name} is not: launch with torchrun (it sets both)"
            )
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    try:
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timeout)
        store = _client_store(cfg.timeout_s)
    except Exception as exc:
        raise StageError(
            "distributed",
            f"rank {rank} of {size} could not join the others at {_address()} within "
            f"{cfg.timeout_s:g} s ({_first_line(exc)})",
        ) from None
    world = World(rank, size, local, backend, cfg)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    _SESSION = _Session(world, store, f"modelquant/{restart}/")
    return world


def _address() -> str:
    return f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"


def _client_store(timeout_s: float) -> Any:
    """A client of the launch's key-value store (torchrun's agent store, or rank 0's)."""
    import torch.distributed as dist

    return dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300] or type(exc).__name__


def describe(exc: BaseException) -> str:
    """One line for an error, as the CLI would say it."""
    from modelquant.errors import ModelquantError

    if isinstance(exc, ModelquantError):
        return f"{exc.label}: {exc}"
    return f"{type(exc).__name__}: {_first_line(exc)}"


class PeerFailed(StageError):
    """Another rank failed (`stopped` False: it posted its error) or stopped responding; this
    rank stops too (exit 3)."""

    def __init__(self, stage: str, rank: int, message: str, stopped: bool) -> None:
        super().__init__(stage, message)
        self.rank = rank
        self.stopped = stopped


def _is_collective_error(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps, e.g. a StageError around it) is a broken collective."""
    import torch.distributed as dist

    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if isinstance(seen, dist.DistError) or (
            isinstance(seen, RuntimeError)
            and any(w in text for w in ("gloo", "Connection closed", "Connection reset", "Timed"))
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _peer_failure(session: _Session, stage: str, exc: BaseException) -> PeerFailed | None:
    """Whether `exc`, a broken collective, came from another rank's failure: then the error that
    names that rank. Any other error is this rank's own (None)."""
    if not _is_collective_error(exc):
        return None
    world = session.world
    size, me = world.size, world.rank
    others = [r for r in range(1, size) if r != me] + ([0] if me != 0 else [])
    try:
        session.store.set(session.key(f"alive/{me}"), "1")
        deadline = time.monotonic() + min(GRACE_S, world.config.timeout_s)
        while True:
            for r in others:  # followers first: rank 0 relays their failures
                line = session.posted(f"failed/{r}")
                if line is not None:
                    session.gone.add(r)
                    return PeerFailed(stage, r, f"rank {r} of {size} failed: {line}", False)
            silent = [r for r in others if session.posted(f"alive/{r}") is None]
            if not silent:
                return None
            if time.monotonic() >= deadline:
                session.gone.update(silent)
                return PeerFailed(
                    stage,
                    silent[0],
                    f"rank {silent[0]} of {size} stopped responding (killed, crashed or hung "
                    f"past train.distributed.timeout_s={world.config.timeout_s:g}); all ranks "
                    "stop",
                    True,
                )
            time.sleep(0.2)
    except Exception:  # the store is gone: it lived in rank 0 (a plain launch), or the launcher
        session.gone.add(0)
        return PeerFailed(stage, 0, _rank0_gone(size), True)


@contextlib.contextmanager
def lockstep(world: World | None, stage: str) -> Iterator[None]:
    """Around work every rank does together (a torch stage): an error that another rank's
    failure caused becomes `PeerFailed` naming that rank; this rank's own error is posted in the
    store (so the others can name it) and raised as it is."""
    session = _SESSION
    if world is None or session is None:
        yield
        return
    try:
        yield
    except PeerFailed:
        raise
    except Exception as exc:
        cause = _peer_failure(session, stage, exc)
        if cause is not None:
            raise cause from None
        # A stage's error wraps what failed in it; the others name the stage themselves.
        inner = exc.__cause__ if isinstance(exc, StageError) and exc.__cause__ else exc
        _post_failure(session, describe(inner))
        raise


def _post_failure(session: _Session, line: str) -> None:
    key = session.key(f"failed/{session.world.rank}")
    with contextlib.suppress(Exception):
        if not session.store.check([key]):
            session.store.set(key, line)


def conclude(code: int, line: str | None, error: BaseException | None) -> tuple[int, str | None]:
    """End this rank's part of the run: (the exit code to exit with, the line to print or None).

    Rank 0 posts its exit code (and its error line) for the followers and waits briefly for them
    to read it. A follower that finished training waits for rank 0's code (however long rank 0
    measures); one that failed posts its line and exits with its own code; one that stopped
    because another rank failed takes rank 0's code and stays silent (rank 0 says what
    happened), unless rank 0 is the one that stopped. Without a session: unchanged."""
    global _SESSION
    session = _SESSION
    if session is None:
        return code, line
    _SESSION = None
    try:
        if session.world.leads:
            return _lead_concludes(session, code, line)
        return _follower_concludes(session, code, line, error)
    finally:
        _destroy()


def _destroy() -> None:
    import torch.distributed as dist

    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()


def _lead_concludes(session: _Session, code: int, line: str | None) -> tuple[int, str | None]:
    world = session.world
    try:
        for r in range(1, world.size):
            failed = session.posted(f"failed/{r}")
            if failed is None:
                continue
            session.gone.add(r)
            if code in (0, 1):  # it failed after the last step it shared with rank 0
                code = EXIT_STAGE_FAILED
                line = f"stage failed: rank {r} of {world.size} failed: {failed}"
        if code != 0 and line:
            _post_failure(session, line)
        session.store.set(session.key("exit"), str(code))
        # After a success every follower is past its last collective and comes to read the code.
        # After a failure, some may sit in a collective that only this process's exit breaks
        # (gloo's connections close with the process, not with destroy_process_group): wait only
        # for those already waiting here.
        if code in (0, 1):
            readers = [r for r in range(1, world.size) if r not in session.gone]
            patience = world.config.timeout_s
        else:
            readers = [r for r in range(1, world.size) if session.posted(f"waiting/{r}")]
            patience = ACK_S
        deadline = time.monotonic() + patience
        while readers and time.monotonic() < deadline:
            readers = [r for r in readers if session.posted(f"failed/{r}") is None]
            if int(session.store.add(session.key("read"), 0)) >= len(readers):
                break  # (a follower that fails meanwhile reads nothing: nobody waits for it)
            time.sleep(0.1)
    except Exception:  # the launcher's store went away: nothing left to tell
        pass
    return code, line


def _follower_concludes(
    session: _Session, code: int, line: str | None, error: BaseException | None
) -> tuple[int, str | None]:
    world = session.world
    peer = error if isinstance(error, PeerFailed) else None
    if code != 0 and peer is None:  # this rank's own failure: it says so and stops
        _post_failure(session, line or f"exit code {code}")
        return code, f"rank {world.rank}: {line}" if line else None
    if peer is not None and peer.rank == 0 and peer.stopped:
        return code, f"rank {world.rank}: {line}"
    deadline = None if peer is None else time.monotonic() + world.config.timeout_s + GRACE_S
    try:
        session.store.set(session.key(f"waiting/{world.rank}"), "1")
        while deadline is None or time.monotonic() < deadline:
            posted = session.posted("exit")
            if posted is not None:
                session.store.add(session.key("read"), 1)
                return int(posted), None
            time.sleep(0.2)
    except Exception:
        pass
    return EXIT_STAGE_FAILED, f"rank {world.rank}: stage failed: {_rank0_gone(world.size)}"


def _rank0_gone(size: int) -> str:
    return (
        f"rank 0 of {size} ended before it said how the run ended (it failed or was killed; "
        f"the store it held at {_address()} went with it): see rank 0's output"
    )


# ---------------------------------------------------------------- collectives the pipeline uses
def all_flags(world: World, flag: bool) -> list[bool]:
    """Every rank's `flag`, in rank order (e.g. which ranks hold a cache entry)."""
    import torch
    import torch.distributed as dist

    flags = [torch.zeros(1, dtype=torch.int64) for _ in range(world.size)]
    dist.all_gather(flags, torch.tensor([int(flag)], dtype=torch.int64))
    return [bool(f.item()) for f in flags]


def share_files(world: World, files: dict[str, bytes] | None) -> dict[str, bytes]:
    """Rank 0's `files` (name -> bytes), on every rank."""
    import torch.distributed as dist

    box: list[Any] = [files if world.leads else None]
    dist.broadcast_object_list(box, src=0)
    return dict(box[0] or {})


# ---------------------------------------------------------------- training
@dataclasses.dataclass
class _Traffic:
    """Gradient bytes each rank hands to the collectives per step, uncompressed and as sent."""

    plain: int = 0
    sent: int = 0
    last: tuple[int, int] = (0, 0)

    def add(self, plain: int, sent: int) -> None:
        self.plain += plain
        self.sent += sent

    def step(self) -> None:
        if self.plain:
            self.last = (self.plain, self.sent)
        self.plain = self.sent = 0


class DataParallel:
    """One training loop's data parallelism. In a single process it changes nothing: `module` is
    the model, `batch_size` the recipe's and `epoch_batches` today's seeded batches. Under
    torchrun, `module` is the model wrapped in DDP (or a sharded FSDP copy), each rank reads its
    shard of every epoch (`DistributedSampler`, seeded, `set_epoch`), the recipe's batch size is
    the global batch (each rank takes its share), and `finish` leaves every rank's `model` with
    rank 0's weights and buffers."""

    def __init__(
        self, model: torch.nn.Module, world: World | None, batch_size: int, seed: int, samples: int
    ) -> None:
        import torch

        self.model = model
        self.world = world
        self.samples = samples
        self.seed = seed
        self.traffic = _Traffic()
        self.module: torch.nn.Module = model
        if world is None:
            self.batch_size = batch_size
            self._rng = torch.Generator().manual_seed(seed)
            return
        self.batch_size = max(1, -(-batch_size // world.size))
        self.sampler = sampler(samples, seed, world.rank, world.size)
        if world.config.strategy == "fsdp":
            self.module = _fsdp(model)
        else:  # DDP from the second step on: the first tells which parameters the loss reaches
            _from_rank_0(model)
            self._first_step = True

    @property
    def per_epoch(self) -> int:
        """Samples this rank reads per epoch."""
        return self.samples if self.world is None else len(self.sampler)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.per_epoch // self.batch_size)

    def epoch_batches(self, epoch: int, lengths: torch.Tensor | None) -> list[torch.Tensor]:
        """The batches of sample indices this rank trains on in `epoch` (epochs in order): in
        one process `finetune.epoch_batches` on all samples; under torchrun on this rank's shard,
        batch order shuffled alike on every rank (so every rank takes as many steps)."""
        import torch

        from modelquant.stages.finetune import epoch_batches

        if self.world is None:
            return epoch_batches(self.samples, self.batch_size, self._rng, lengths)
        shard = epoch_shard(self.sampler, epoch)
        rng = torch.Generator().manual_seed(self.seed + epoch)
        return epoch_batches(len(shard), self.batch_size, rng, lengths, order=shard)

    def sync(self, extra: Sequence[torch.nn.Parameter] = ()) -> None:
        """After `backward`: average the gradients of parameters outside the wrapped module
        (e.g. a distillation's feature projections) across ranks; after the first step, also
        the model's, then wrap it in DDP (`module`) for the steps after."""
        self.traffic.step()
        if self.world is None:
            return
        if getattr(self, "_first_step", False):
            self._first_step = False
            trained = [p for p in self.model.parameters() if p.requires_grad]
            reached = _average_gradients(trained, self.world.size)
            # Parameters no loss reaches (a pooler, a head without weight) need DDP's search for
            # unused parameters every step; its static_graph mode fails on Hugging Face models.
            self.module = _ddp(
                self.model, self.world, self.traffic, self.seed, self.steps_per_epoch,
                find_unused=not all(reached),
            )  # fmt: skip
        _average_gradients(list(extra), self.world.size)

    def mean(self, total: float, count: int) -> float:
        """The mean over every rank of a per-sample sum (an epoch's loss)."""
        if self.world is None:
            return total / max(count, 1)
        import torch
        import torch.distributed as dist

        both = torch.tensor([total, float(count)], dtype=torch.float64)
        dist.all_reduce(both)
        return float(both[0] / both[1].clamp_min(1))

    def finish(self) -> None:
        """Training is over: `model` on every rank holds rank 0's weights and buffers."""
        if self.world is None:
            return
        import torch.distributed as dist

        if self.world.config.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True))
            self.model.load_state_dict(full)
        for buffer in self.model.buffers():  # BatchNorm statistics of the last local batch
            dist.broadcast(buffer, src=0)

    def details(self) -> dict[str, Any] | None:
        """What the report says about the data parallelism (None in a single process)."""
        if self.world is None:
            return None
        cfg = self.world.config
        out: dict[str, Any] = {
            "world_size": self.world.size,
            "backend": self.world.backend,
            "strategy": cfg.strategy,
            "per_rank_batch_size": self.batch_size,
            "global_batch_size": self.batch_size * self.world.size,
            "gradient_compression": cfg.gradient_compression,
        }
        plain, sent = self.traffic.last
        if plain:
            out.update(
                gradient_bytes_per_step=plain,
                sent_bytes_per_step=sent,
                saved_bytes_per_step=plain - sent,
            )
        return out


def sampler(samples: int, seed: int, rank: int, size: int) -> DistributedSampler[int]:
    """torch's `DistributedSampler` over `samples` indices: seeded, shuffled, padded so that
    every rank reads as many (a few samples twice), each rank its own shard."""
    from torch.utils.data import DistributedSampler

    return DistributedSampler(
        range(samples),  # type: ignore[arg-type]  # it only takes len() of the dataset
        num_replicas=size,
        rank=rank,
        shuffle=True,
        seed=seed,
    )


def epoch_shard(sampler: DistributedSampler[int], epoch: int) -> torch.Tensor:
    """The indices a rank reads in `epoch` (`set_epoch`: another order every epoch)."""
    import torch

    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.int64)


def _ddp(
    model: torch.nn.Module,
    world: World,
    traffic: _Traffic,
    seed: int,
    warmup: int,
    find_unused: bool,
) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    # DDP broadcasts rank 0's weights and buffers here (the first step changed no weight yet).
    wrapped = DistributedDataParallel(model, find_unused_parameters=find_unused)
    state, hook = comm_hook(world.config, traffic, seed, warmup)
    wrapped.register_comm_hook(state, hook)
    return wrapped


def _from_rank_0(model: torch.nn.Module) -> None:
    """Every rank starts from rank 0's weights and buffers."""
    import torch.distributed as dist

    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def _average_gradients(params: list[torch.nn.Parameter], size: int) -> list[bool]:
    """Average `params`' gradients over the ranks in one all-reduce (a rank whose loss did not
    reach a parameter adds zeros); whether each got a gradient on every rank."""
    import torch
    import torch.distributed as dist

    if not params:
        return []
    got = torch.tensor([p.grad is not None for p in params], dtype=torch.int64)
    dist.all_reduce(got, op=dist.ReduceOp.MIN)
    anywhere = torch.tensor([p.grad is not None for p in params], dtype=torch.int64)
    dist.all_reduce(anywhere, op=dist.ReduceOp.MAX)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(size)
    start = 0
    for p, used in zip(params, anywhere.tolist(), strict=True):
        n = p.numel()
        if used:
            p.grad = flat[start : start + n].view_as(p).clone()
        start += n
    return [bool(g) for g in got.tolist()]


def _fsdp(model: torch.nn.Module) -> torch.nn.Module:
    """A sharded copy of `model` (torch's fully_shard): each block of a ModuleList (transformer
    layers) is a unit, the rest goes with the root. `model` itself stays a plain module."""
    import copy

    import torch
    from torch.distributed.fsdp import fully_shard

    _from_rank_0(model)
    sharded = copy.deepcopy(model)
    for module in list(sharded.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                if any(p.requires_grad for p in block.parameters()):
                    fully_shard(block)
    fully_shard(sharded)
    return sharded


# ---------------------------------------------------------------- gradient compression
def _as_hook(fn: Any) -> Any:
    """`fn` without annotations on `bucket` and its return: DDP checks them against the objects
    `dist.GradBucket` and `Future[Tensor]`, which postponed (string) annotations never are."""
    fn.__annotations__.pop("bucket", None)
    fn.__annotations__.pop("return", None)
    return fn


def _count(traffic: _Traffic, hook: Any, sent: Any) -> Any:
    def counted(state: Any, bucket: Any) -> Any:
        buffer = bucket.buffer()
        traffic.add(buffer.numel() * buffer.element_size(), sent(state, bucket))
        return hook(state, bucket)

    return _as_hook(counted)


def comm_hook(
    cfg: DistributedConfig, traffic: _Traffic, seed: int, warmup: int = 2
) -> tuple[Any, Any]:
    """(state, hook) for DDP's `register_comm_hook`, counting the bytes each step sends.
    PowerSGD starts after `warmup` steps of plain all-reduce (one epoch: torch's advice)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    kind = cfg.gradient_compression

    def numel(bucket: Any) -> int:
        return int(bucket.buffer().numel())

    if kind == "none":
        return None, _count(traffic, default_hooks.allreduce_hook, lambda s, b: 4 * numel(b))
    if kind == "fp16":
        return None, _count(traffic, default_hooks.fp16_compress_hook, lambda s, b: 2 * numel(b))
    if kind == "bf16":
        return None, _count(traffic, bf16_hook, lambda s, b: 2 * numel(b))
    if kind == "int8":
        return None, _count(traffic, int8_hook, lambda s, b: int8_bytes(numel(b)))
    state = powerSGD_hook.PowerSGDState(
        process_group=None,
        matrix_approximation_rank=cfg.powersgd_rank,
        start_powerSGD_iter=max(2, warmup),  # 2: the least torch allows with error feedback
        random_seed=seed,
    )
    return state, _count(traffic, powerSGD_hook.powerSGD_hook, _powersgd_bytes)


def _powersgd_bytes(state: Any, bucket: Any) -> int:
    """What PowerSGD all-reduces for one bucket: vectors and poorly compressible matrices as
    they are, every other matrix as its two low-rank factors P (n x r) and Q (m x r)."""
    if state.iter < state.start_powerSGD_iter:
        return 4 * int(bucket.buffer().numel())
    r = state.matrix_approximation_rank
    total = 0
    for grad in bucket.gradients():
        if grad.dim() <= 1:
            total += grad.numel()
            continue
        n = grad.shape[0]
        m = grad.numel() // n
        rank = min(n, m, r)
        if (n + m) * rank * state.min_compression_rate < n * m:
            total += (n + m) * rank
        else:
            total += n * m
    return 4 * total


def bf16_hook(state: Any, bucket: Any) -> Any:
    """Gradients all-reduced as bfloat16, then averaged back into the fp32 bucket (torch's
    bf16_compress_hook refuses gloo)."""
    import torch
    import torch.distributed as dist

    buffer = bucket.buffer()
    size = dist.get_world_size()
    compressed = buffer.to(torch.bfloat16).div_(size)
    fut = dist.all_reduce(compressed, async_op=True).get_future()

    def decompress(_fut: Any) -> torch.Tensor:
        buffer.copy_(compressed)
        return buffer

    return fut.then(decompress)


def int8_bytes(count: int) -> int:
    """Bytes of `int8_encode`'s payload for `count` values: the codes and a scale per chunk."""
    chunks = max(1, -(-count // INT8_CHUNK))
    return chunks * (INT8_CHUNK + 4)


def int8_encode(values: torch.Tensor) -> torch.Tensor:
    """`values` as one int8 tensor: a float32 scale (max |value| / 127) per chunk of
    `INT8_CHUNK` values, as bytes, then the rounded codes."""
    import torch

    flat = values.detach().reshape(-1).float()
    chunks = max(1, -(-flat.numel() // INT8_CHUNK))
    blocks = torch.zeros(chunks * INT8_CHUNK, dtype=torch.float32)
    blocks[: flat.numel()] = flat
    blocks = blocks.view(chunks, INT8_CHUNK)
    scale = blocks.abs().amax(dim=1) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(blocks / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return torch.cat([scale.view(torch.int8), codes.reshape(-1)])


def int8_decode(payload: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` float32 values an `int8_encode` payload stands for."""
    import torch

    chunks = payload.numel() // (INT8_CHUNK + 4)
    scale = payload[: chunks * 4].clone().view(torch.float32)
    codes = payload[chunks * 4 :].view(chunks, INT8_CHUNK).float()
    return (codes * scale[:, None]).reshape(-1)[:count]


def int8_hook(state: Any, bucket: Any) -> Any:
    """8-bit gradient exchange (torch's quantization_pertensor_hook fails on gloo): each rank
    encodes its bucket (`int8_encode`), all ranks all-gather the payloads, and each decodes and
    averages them in rank order, so every rank gets the same gradients."""
    import torch
    import torch.distributed as dist

    buffer = bucket.buffer()
    size = dist.get_world_size()
    payload = int8_encode(buffer)
    gathered = [torch.empty_like(payload) for _ in range(size)]
    fut = dist.all_gather(gathered, payload, async_op=True).get_future()

    def decode(_fut: Any) -> torch.Tensor:
        total = torch.zeros(buffer.numel(), dtype=torch.float32)
        for part in gathered:
            total += int8_decode(part, buffer.numel())
        buffer.copy_((total / size).view_as(buffer))
        return buffer

    return fut.then(decode)


def environment_info(world: World | None, stage_details: Sequence[dict[str, Any]]) -> Any:
    """The report's `environment.distributed`: world size, backend, strategy, compression and
    the per-rank batch size of the stages that trained (None in a single process)."""
    if world is None:
        return None
    from modelquant.report.model import DataParallelInfo

    per_rank = [
        d["data_parallel"]["per_rank_batch_size"]
        for d in stage_details
        if isinstance(d.get("data_parallel"), dict)
    ]
    return DataParallelInfo(
        world_size=world.size,
        backend=world.backend,
        strategy=world.config.strategy,
        gradient_compression=world.config.gradient_compression,
        per_rank_batch_size=sorted(set(per_rank)),
    )
