"""Compressing a transformer beyond quantization, on BERTs the tests build from a config: heads and
FFN channels pruned through torch-pruning (shapes, reload, export), a layer-drop student
distilled on generated text, and the report's step-by-step scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from modelquant.models.hf import go_offline
from tests.hf.test_pipeline import run as compress


def bert(layers: int = 2, heads: int = 4, hidden: int = 64, ffn: int = 128) -> torch.nn.Module:
    go_offline()
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=64,
    )
    return BertModel(config).eval()


def example() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
    }


def magnitude() -> object:
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=2)


def test_half_the_heads_and_ffn_channels_go_and_the_hidden_size_stays(tmp_path: Path) -> None:
    from transformers import AutoModel

    from modelquant.models.transformer import prune_heads_ffn, shape_summary

    model = bert()
    # Make head 3 of layer 0 and head 0 of layer 1 the strongest: they must survive.
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.weight[48:64] *= 10
        model.encoder.layer[1].attention.self.query.weight[0:16] *= 10
    removed = prune_heads_ffn(model, example(), 0.5, 0.5, magnitude())
    assert shape_summary(model) == [{"heads": 2, "ffn": 64}, {"heads": 2, "ffn": 64}]
    assert 3 not in removed[0] and 0 not in removed[1] and len(removed[0]) == 2
    for layer in model.encoder.layer:
        attn = layer.attention
        assert attn.self.attention_head_size == 16  # whole heads go, head size stays
        assert attn.self.query.weight.shape == (32, 64)
        assert attn.self.key.weight.shape == attn.self.value.weight.shape == (32, 64)
        assert attn.output.dense.weight.shape == (64, 32)
        assert layer.intermediate.dense.weight.shape == (64, 64)
        assert layer.output.dense.weight.shape == (64, 64)
    assert model.embeddings.word_embeddings.weight.shape == (100, 64)
    out = model(**example()).last_hidden_state
    assert out.shape == (2, 7, 64)
    # The config says what the shapes are: save_pretrained reloads the same model.
    model.save_pretrained(tmp_path / "pruned", safe_serialization=True)
    again = AutoModel.from_pretrained(tmp_path / "pruned").eval()
    assert torch.allclose(again(**example()).last_hidden_state, out, atol=1e-6)


def test_the_pruned_bert_exports_through_optimum_and_runs_in_onnxruntime(tmp_path: Path) -> None:
    import onnxruntime as ort

    from modelquant.models.hf import HfModel, export
    from modelquant.models.transformer import prune_heads_ffn

    model = bert()
    prune_heads_ffn(model, example(), 0.5, 0.5, magnitude())
    path = export(model, HfModel(tmp_path, "feature-extraction", "bert"), tmp_path / "m.onnx", None)
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {k: v.numpy() for k, v in example().items()}
    (got,) = session.run(["last_hidden_state"], feed)
    want = model(**example()).last_hidden_state.detach().numpy()
    assert np.abs(got - want).max() < 1e-4


def test_pruning_every_head_is_refused(tmp_path: Path) -> None:
    from modelquant.recipe import Recipe

    with pytest.raises(ValueError, match="heads"):
        Recipe.model_validate(
            {
                "name": "x",
                "model": {"factory": "m:f"},
                "data": {"evaluation": {"source": "digits", "split": "test"}},
                "stages": [{"prune": {"method": "magnitude", "heads": 0.5}}],
            }
        )


def test_a_student_from_the_teachers_layers_starts_as_those_layers() -> None:
    from modelquant.models.transformer import keep_layers

    teacher = bert(layers=3)
    student = keep_layers(teacher, [0, 2])
    assert len(student.encoder.layer) == 2 and student.config.num_hidden_layers == 2
    assert len(teacher.encoder.layer) == 3  # the teacher is left whole
    for kept, original in zip(student.encoder.layer, [0, 2], strict=True):
        want = teacher.encoder.layer[original].state_dict()
        for name, tensor in kept.state_dict().items():
            assert torch.equal(tensor, want[name])


def recipe(tmp_path: Path, tiny_bert: Path, sentences_csv: Path, stages: list) -> Path:
    entry = {"source": "text", "path": str(sentences_csv), "text": "sentence", "max_length": 32}
    data = {
        "train": {**entry, "split": "calibration", "generate": 60},
        "validation": {**entry, "split": "validation"},
        "evaluation": {**entry, "split": "evaluation", "batch_size": 4},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-transformer",
                "model": {"hf": str(tiny_bert)},
                "data": data,
                "stages": stages,
                "evaluate": {"batch_sizes": [2], "repeats": 4, "warmup": 1, "block": 2},
                "gates": {"min_cosine": 0.5},
            }
        )
    )
    return path


STAGES = [
    {
        "distill": {
            "student": {"from_teacher": {"layers": [1]}},
            "losses": {"feature": 1.0},
            "freeze": ["embeddings"],
            "finetune": {"epochs": 3, "batch_size": 8, "lr": 0.003, "lr_schedule": "linear"},
        }
    },
    {
        "prune": {
            "method": "structured",
            "heads": 0.5,
            "ffn": 0.5,
            "importance": "taylor",
            "finetune": {"epochs": 1, "batch_size": 8},
        }
    },
    {"export": {}},
    {"quantize": {"precision": "int8", "mode": "dynamic"}},
]


def test_layer_drop_then_head_pruning_then_int8_in_one_recipe(
    tiny_bert: Path, sentences_csv: Path, tmp_path: Path
) -> None:
    path = recipe(tmp_path, tiny_bert, sentences_csv, STAGES)
    code, report, output = compress(path, tmp_path / "o")
    assert code == 0, output
    distill, prune = report["stages"][0]["details"], report["stages"][1]["details"]
    assert distill["layers_kept"] == [1] and distill["frozen"] == ["embeddings"]
    assert distill["train_data"].endswith("calibration+60 generated")
    assert distill["train_samples"] == 6 + 60  # 30 % of the 20 sentences, and the generated
    assert distill["loss"]["loss_last_epoch"] < distill["loss"]["loss_first_epoch"]
    assert distill["feature_pairs"] == {"encoder.layer.0": "encoder.layer.1"}
    layers = prune["transformer_layers"]
    assert list(layers) == ["0"]  # the student has one layer
    assert layers["0"]["heads_before"] == 2 and layers["0"]["heads_after"] == 1
    assert layers["0"]["ffn_before"] == 64 and layers["0"]["ffn_after"] == 32
    assert "heads and FFN width per layer" in output
    # Every stage's model scored on the evaluation data; the last one is the compressed model.
    quality = [s["quality"] for s in report["stages"]]
    assert [q["runtime"] for q in quality] == ["torch", "torch", *["onnxruntime cpu"] * 2]
    assert quality[-1]["value"] == pytest.approx(report["compressed"]["accuracy"], abs=1e-6)
    assert quality[-1]["params"] == report["compressed"]["params"]
    # The int8 file counts its embedding table too (a Gather before a DequantizeLinear).
    assert report["compressed"]["params"] == quality[2]["params"]
    assert quality[0]["params"] < report["baseline"]["params"]  # one layer fewer
    assert quality[2]["value"] == pytest.approx(quality[1]["value"], abs=1e-4)  # export is exact
    assert "after each stage (evaluation data)" in output
    md = (tmp_path / "o" / "report.md").read_text()
    assert "## After each stage" in md and "prune: attention heads and FFN width" in md


def test_a_second_run_takes_the_student_and_the_pruned_model_from_the_cache(
    tiny_bert: Path, sentences_csv: Path, tmp_path: Path
) -> None:
    path = recipe(tmp_path, tiny_bert, sentences_csv, STAGES)
    code, first, output = compress(path, tmp_path / "o")
    assert code == 0, output
    code, second, output = compress(path, tmp_path / "o")
    assert code == 0, output
    assert [s["cached"] for s in second["stages"]] == [True] * 4
    assert second["compressed"]["accuracy"] == first["compressed"]["accuracy"]


@pytest.mark.parametrize(
    ("losses", "message"),
    [
        ({"kl": 0.5}, "has no logits or labels"),
        ({"cosine": 0, "feature": 0}, "at least one loss term"),
    ],
)
def test_loss_terms_a_sentence_encoder_cannot_use_are_bad_input(
    tiny_bert: Path, sentences_csv: Path, tmp_path: Path, losses: dict, message: str
) -> None:
    stages = [{"distill": {"student": {"from_teacher": {"layers": [0]}}, "losses": losses}}]
    code, _, output = compress(recipe(tmp_path, tiny_bert, sentences_csv, stages), tmp_path / "o")
    assert code == 2 and message in output


def test_a_layer_the_teacher_lacks_is_bad_input(
    tiny_bert: Path, sentences_csv: Path, tmp_path: Path
) -> None:
    stages = [{"distill": {"student": {"from_teacher": {"layers": [0, 5]}}}}]
    code, _, output = compress(recipe(tmp_path, tiny_bert, sentences_csv, stages), tmp_path / "o")
    assert code == 2 and "the teacher has 2 layers" in output
