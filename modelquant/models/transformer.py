"""Transformer encoders (Hugging Face BERT family) as the compression stages see them: their
layer stack, a student made of some of the teacher's layers, mean-pooled sentence embeddings, and
attention heads / feed-forward widths per layer, before and after structured pruning.

Structured pruning itself runs through torch-pruning's dependency graph (`prune_heads_ffn`): it
finds the groups (each layer's query/key/value outputs with the attention output's inputs; each
layer's intermediate outputs with the FFN output's inputs) and removes whole heads and channels;
the hidden size stays (embeddings and pooler are left out), so embeddings keep their meaning.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from modelquant.errors import StageError, UserError

if TYPE_CHECKING:
    import torch


def layer_stack(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The model's list of transformer layers and its name (`encoder.layer` in BERT): the
    ModuleList as long as `config.num_hidden_layers`."""
    import torch

    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None)
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and name and len(module) == count
    ]
    if not found:
        raise UserError(
            "this model has no transformer layer stack (a ModuleList of config.num_hidden_layers "
            "layers); layer-drop students and head pruning need a Hugging Face transformer"
        )
    return found[0]


def keep_layers(teacher: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """A copy of `teacher` that keeps only `layers` (their weights), its config saying so."""
    import torch

    name, stack = layer_stack(teacher)
    if max(layers) >= len(stack):
        raise UserError(
            f"distill student from_teacher layers {layers}: the teacher has {len(stack)} layers "
            f"(0 to {len(stack) - 1})"
        )
    student = copy.deepcopy(teacher)
    parent_name, _, attr = name.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    kept = torch.nn.ModuleList([getattr(parent, attr)[i] for i in layers])
    setattr(parent, attr, kept)
    config: Any = student.config
    config.num_hidden_layers = len(layers)
    for new_index, layer in enumerate(kept):
        for module in layer.modules():  # the key/value cache index, where the model keeps one
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index  # type: ignore[assignment]
    return student


def pooled(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings as the metric makes them (`tasks.Task.reduce`): the mean over the
    tokens the mask keeps, scaled to unit length; differentiable."""
    import torch

    mask = attention_mask[:, : token_embeddings.shape[1]].unsqueeze(-1).to(token_embeddings.dtype)
    summed = (token_embeddings * mask).sum(dim=1)
    mean = summed / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, dim=-1)


def _bert_layers(model: torch.nn.Module) -> list[Any]:
    """The layers of a BERT-style encoder (attention.self.query/key/value, attention.output.dense,
    intermediate.dense, output.dense), or bad input naming what structured pruning takes."""
    _, stack = layer_stack(model)
    for layer in stack:
        attn = getattr(getattr(layer, "attention", None), "self", None)
        if attn is None or not all(hasattr(attn, n) for n in ("query", "key", "value")):
            model_type = getattr(getattr(model, "config", None), "model_type", "?")
            raise UserError(
                f"prune structured: heads and FFN pruning takes BERT-style encoders (attention."
                f"self.query/key/value, intermediate.dense); this {model_type} model's layers "
                "differ"
            )
        if not hasattr(getattr(layer, "intermediate", None), "dense"):
            raise UserError("prune structured: the encoder's layers have no intermediate.dense")
    return list(stack)


def shape_summary(model: torch.nn.Module) -> list[dict[str, int]]:
    """Per layer: attention heads and feed-forward width."""
    return [
        {
            "heads": int(layer.attention.self.num_attention_heads),
            "ffn": int(layer.intermediate.dense.out_features),
        }
        for layer in _bert_layers(model)
    ]


def prune_heads_ffn(
    model: torch.nn.Module,
    example: dict[str, torch.Tensor],
    heads: float,
    ffn: float,
    importance: Any,
    before_step: Any = None,
) -> dict[int, list[int]]:
    """Remove `heads` of each layer's attention heads and `ffn` of its feed-forward channels
    (shares, rounded up per layer) in place, ranked by `importance` (a torch-pruning importance);
    `before_step(model)` runs after the graph is built (a Taylor score's backward pass). Returns
    the original indexes of the heads removed per layer. The hidden size is left alone, and the
    model's attributes and config are set to the new shapes (so that save_pretrained reloads)."""
    from modelquant.extras import require

    tp: Any = require("torch_pruning", "structured pruning")
    layers = _bert_layers(model)
    num_heads: dict[Any, int] = {}
    query_layer: dict[Any, int] = {}
    ratios: dict[Any, float] = {}
    for i, layer in enumerate(layers):
        attn = layer.attention.self
        for linear in (attn.query, attn.key, attn.value):
            num_heads[linear] = int(attn.num_attention_heads)
        query_layer[attn.query] = i
        if ffn > 0:
            ratios[layer.intermediate.dense] = ffn
        if heads > 0:
            # Head pruning happens inside torch-pruning's width branch, which runs only for a
            # group given a ratio; with prune_head_dims off, this ratio only opens that branch.
            ratios[attn] = heads
    ignored = [m for m in (getattr(model, "embeddings", None), getattr(model, "pooler", None)) if m]
    try:
        pruner = tp.pruner.BasePruner(
            model,
            example,
            importance=importance,
            global_pruning=False,  # one width for every layer: the config has one
            pruning_ratio=0.0,
            pruning_ratio_dict=ratios,
            num_heads=num_heads,
            prune_num_heads=heads > 0,
            prune_head_dims=False,
            head_pruning_ratio=heads,
            ignored_layers=ignored,
            output_transform=lambda out: out[0].sum(),
            in_channel_groups={},  # torch-pruning mutates its own default dicts across calls
            out_channel_groups={},
        )
    except Exception as exc:
        raise StageError("prune", f"torch-pruning could not trace the model: {exc}") from exc
    if before_step is not None:
        before_step(model)
    removed: dict[int, list[int]] = {}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            module = dep.target.module
            if module in query_layer and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                size = layers[query_layer[module]].attention.self.attention_head_size
                removed[query_layer[module]] = sorted({int(i) // size for i in idxs})
        group.prune()
    for i, layer in enumerate(layers):
        attn = layer.attention.self
        attn.num_attention_heads = pruner.num_heads[attn.query]
        attn.all_head_size = attn.query.out_features
        layer.attention.pruned_heads = set(removed.get(i, []))
    sync_config(model)
    return removed


def sync_config(model: torch.nn.Module) -> None:
    """Set the config to the modules' shapes: one feed-forward width (`intermediate_size`) and
    the heads each layer lacks (`pruned_heads`, Hugging Face's own mechanism, which reload
    applies before the weights are loaded; which heads does not matter, only how many)."""
    layers = _bert_layers(model)
    widths = {int(layer.intermediate.dense.out_features) for layer in layers}
    if len(widths) != 1:
        raise StageError("prune", f"layers ended with different feed-forward widths {widths}")
    config: Any = model.config
    config.intermediate_size = widths.pop()
    full = int(config.num_attention_heads)
    config.pruned_heads = {
        i: list(range(full - int(layer.attention.self.num_attention_heads)))
        for i, layer in enumerate(layers)
        if int(layer.attention.self.num_attention_heads) < full
    }
