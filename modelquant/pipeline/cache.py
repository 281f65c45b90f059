"""The content-hash stage cache: keys made of what a stage reads, entries holding what it wrote.

A stage's key is the hash of its input model's *content* (ONNX bytes, or a torch module's tensors
and structure) chained with the key of the stage before, its settings, the bytes of every file
its settings name, the contents of the data it reads, the seed, the targets where it reads them,
and the versions of the libraries that compute it. Rewrite a checkpoint or an `.npz` at the same
path and every stage from the first one that reads it on is recomputed.

Entries live in `<out>/.cache/<index>-<stage>-<key>/`: ONNX stages keep `model.onnx` (and their
variants), torch stages keep `state_dict.safetensors` plus `structure.json` (the shape attributes
of each layer, so a structurally pruned model is rebuilt without unpickling anything). A stage
writes into a `.partial` folder that is renamed into place only when it succeeded, and removed
when it failed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from modelquant import __version__

if TYPE_CHECKING:
    import torch

    from modelquant.stages import Stage, StageContext
    from modelquant.state import ModelState, StageRecord

# Libraries whose versions change what a stage computes.
KEYED_LIBRARIES = (
    "torch",
    "onnx",
    "onnxruntime",
    "onnxruntime-qnn",
    "onnxruntime-gpu",
    "torch-pruning",
    "scikit-learn",
    "numpy",
    "safetensors",
    "onnxscript",
)


def hash_parts(*parts: Any) -> str:
    """sha256 of JSON-able parts (paths and other objects by their string)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str | None]:
    """Versions of the keyed libraries (read once per process: they cannot change under it)."""
    from modelquant.environment import package_version

    return {dist: package_version(dist) for dist in KEYED_LIBRARIES}


def _module_attributes(module: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Per layer, the plain attributes that describe its shape (in_channels, out_features, ...).

    What torch-pruning changes when it shrinks a layer; JSON only, so reading a cache entry never
    unpickles anything."""
    out: dict[str, dict[str, Any]] = {}
    for name, layer in module.named_modules():
        attrs = {}
        for key, value in vars(layer).items():
            if key.startswith("_") or key == "training":
                continue
            if _plain(value):
                attrs[key] = list(value) if isinstance(value, tuple) else value
        out[name] = attrs
    return out


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    return isinstance(value, tuple | list) and all(
        isinstance(v, bool | int | float | str) for v in value
    )


def module_hash(module: torch.nn.Module) -> str:
    """Hash of a torch module's content: its tensors (names, dtypes, shapes, bytes; in name
    order) and the shape attributes of its layers."""
    digest = hashlib.sha256()
    # By name, not registration order: pruning (torch.nn.utils.prune.remove) re-registers a
    # layer's weight after its bias, and the module rebuilt from the cache has the skeleton's
    # order; the same tensors must hash the same, or every stage after a cached one reruns.
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    digest.update(json.dumps(_module_attributes(module), sort_keys=True).encode())
    return digest.hexdigest()


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


def state_content_hash(state: ModelState) -> str:
    """The content of the model in hand: its ONNX file's bytes, else its torch tensors."""
    from modelquant.models import onnx_file

    if state.onnx_path is not None:
        return onnx_file.content_hash(state.onnx_path)
    assert state.module is not None
    return module_hash(state.module)


def _paths_in(value: Any) -> Iterator[tuple[str, Any]]:
    """(kind, value) of every file a config names: Path fields and `factory` module specs."""
    if isinstance(value, BaseModel):
        for key in type(value).model_fields:
            item = getattr(value, key)
            if key == "factory" and isinstance(item, str):
                yield "factory", item
            else:
                yield from _paths_in(item)
    elif isinstance(value, Path):
        yield "file", value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _paths_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _paths_in(item)


def settings_files(config: BaseModel, base_dirs: list[Path]) -> list[str]:
    """Hashes of the bytes of every file a stage's settings name (checkpoints, factory sources).

    A file that does not exist hashes as missing; the stage itself reports it as bad input."""
    from modelquant.errors import UserError
    from modelquant.models import factory, resolve_path

    hashes = []
    for kind, value in _paths_in(config):
        try:
            if kind == "factory":
                source = inspect.getsourcefile(factory.import_factory(value, base_dirs))
                hashes.append(f"{value}={file_hash(Path(source)) if source else '?'}")
            else:
                hashes.append(f"{value}={file_hash(resolve_path(value, base_dirs, 'file'))}")
        except UserError:
            hashes.append(f"{value}=missing")
    return hashes


def stage_key(
    previous: str,
    input_content: str,
    stage: Stage,
    ctx: StageContext,
    data_hashes: dict[str, str],
) -> str:
    """The key of one stage: everything its output depends on (a torch stage trained by several
    ranks, their number and how they exchanged gradients)."""
    world = ctx.world.key_parts() if ctx.world is not None and stage.produces == "torch" else []
    return hash_parts(
        previous,
        input_content,
        stage.name,
        stage.config.model_dump(mode="json"),
        settings_files(stage.config, list(ctx.base_dirs)),
        ctx.seed,
        data_hashes,
        list(ctx.targets) if stage.uses_targets else None,
        [dataclasses.asdict(ctx.timing), ctx.budget and dataclasses.asdict(ctx.budget)]
        if stage.searches()
        else None,
        library_versions(),
        __version__,
        *world,
    )


class StageCache:
    """Stage outputs by key under `root`; a hit hands back the model the stage once produced."""

    def __init__(self, root: Path, writes: bool = True) -> None:
        self.root = root
        self.writes = writes
        """False on ranks other than 0 under torchrun: they read entries but never write them;
        their stages work in private temp folders."""
        self.scratch = root if writes else Path(tempfile.mkdtemp(prefix="modelquant-cache-"))
        """Where stages keep caches finer than a stage (calibration ranges): the cache itself,
        or a private temp folder on ranks that do not write."""

    def close(self) -> None:
        """Remove the private scratch folder of a rank that does not write (nothing else)."""
        if not self.writes:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def entry(self, index: int, name: str, key: str) -> Path:
        return self.root / f"{index:02d}-{name}-{key[:16]}"

    def load(
        self, entry: Path, stage: Stage, state: ModelState, ctx: StageContext
    ) -> tuple[ModelState, dict[str, Any]] | None:
        """The cached output (model and what the stage reported), or None when there is none."""
        meta_path = entry / "details.json"
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        if (entry / "model.onnx").is_file():
            variants = {b: entry / name for b, name in meta.get("variants", {}).items()}
            return state.replace(
                onnx_path=entry / "model.onnx", variants={**state.variants, **variants}
            ), meta
        if (entry / "state_dict.safetensors").is_file():
            module = load_module(stage.skeleton(state, ctx), entry)
            if module is None:
                return None
            return state.replace(module=module, onnx_path=None), meta
        return None

    def begin(self, entry: Path) -> Path:
        """A fresh `.partial` folder for a stage about to run."""
        if not self.writes:
            return Path(tempfile.mkdtemp(prefix=f"modelquant-{entry.name}-"))
        work = entry.with_name(entry.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        return work

    @staticmethod
    def abandon(work: Path) -> None:
        shutil.rmtree(work, ignore_errors=True)

    def file(self, entry: Path, name: str, make: Callable[[Path], object]) -> Path:
        """`entry/name`, made by `make(path)` on a miss the way stages are: in a `.partial`
        folder that becomes the entry only when `make` succeeded."""
        if (entry / name).is_file():
            return entry / name
        work = self.begin(entry)
        try:
            make(work / name)
        except BaseException:
            self.abandon(work)
            raise
        if not self.writes:
            return work / name
        os.replace(work, entry)
        return entry / name

    def commit(self, work: Path, entry: Path, new: ModelState, record: StageRecord) -> ModelState:
        """Save what the stage produced into its work folder, then rename it into place."""
        if not self.writes:  # the model stays in memory; its private work folder goes
            if new.onnx_path is None or not new.onnx_path.is_relative_to(work):
                self.abandon(work)
            return new
        meta: dict[str, Any] = {"seconds": record.seconds, "details": record.details}
        try:
            if new.onnx_path is not None and new.onnx_path.is_relative_to(work):
                meta["variants"] = {
                    b: str(p.relative_to(work))
                    for b, p in new.variants.items()
                    if p.is_relative_to(work)
                }
            elif new.module is not None:
                save_module(new.module, work)
            # details.json last: an entry is whole when it has one (`load` looks for it)
            (work / "details.json").write_text(json.dumps(meta, default=str))
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(work, entry)
        except BaseException:  # interrupted while saving: the half-saved entry goes
            self.abandon(work)
            raise
        if new.onnx_path is None:
            return new
        return new.replace(
            onnx_path=_moved(new.onnx_path, work, entry),
            variants={k: _moved(v, work, entry) for k, v in new.variants.items()},
        )


def _moved(path: Path, old: Path, new: Path) -> Path:
    try:
        return new / path.relative_to(old)
    except ValueError:
        return path


def save_module(module: torch.nn.Module, folder: Path) -> None:
    """A torch module's tensors as safetensors and its layers' shape attributes as JSON."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(tensors, str(folder / "state_dict.safetensors"))
    (folder / "structure.json").write_text(json.dumps(_module_attributes(module), sort_keys=True))


def load_module(skeleton: torch.nn.Module, folder: Path) -> torch.nn.Module | None:
    """Rebuild a saved module on a skeleton of the same architecture (shapes may differ, as after
    structured pruning); None when the entry does not fit it."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "state_dict.safetensors"))
    attrs = json.loads((folder / "structure.json").read_text())
    layers = dict(skeleton.named_modules())
    for name, values in attrs.items():
        layer = layers.get(name)
        if layer is None:
            return None
        for key, value in values.items():
            current = getattr(layer, key, None)
            setattr(layer, key, tuple(value) if isinstance(current, tuple) else value)
    own = skeleton.state_dict()
    for key, tensor in tensors.items():
        if key not in own or own[key].shape == tensor.shape:
            continue
        owner_name, _, attr = key.rpartition(".")
        owner = layers[owner_name]
        blank = torch.empty(tensor.shape, dtype=tensor.dtype)
        if attr in owner._parameters:
            setattr(owner, attr, torch.nn.Parameter(blank))
        else:
            owner.register_buffer(attr, blank)
    try:
        skeleton.load_state_dict(tensors, strict=True)
    except RuntimeError:
        return None
    return skeleton.eval()
