"""CENET's options and contracts beyond the parity fixture (tests/parity/test_cenet_parity.py):
the authors' options, the injection layer's bounds, and the CE hook's guard."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msakit.config import build_config
from msakit.models import FeatureDims, create_model

DIMS = FeatureDims(audio=5, vision=7)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cenet_tiny_bert")
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(folder)
    return str(folder)


def build(bert_dir: str, *overrides: str):
    torch.manual_seed(1)
    config = build_config("cenet", [f"model.language_model={bert_dir}", *overrides])
    return config, create_model(config.model, DIMS)


def batch(steps_audio: int = 4, steps_vision: int = 3) -> dict:
    generator = torch.Generator().manual_seed(2)
    return {"input_ids": torch.randint(3, 60, (2, 6), generator=generator),
            "attention_mask": torch.ones(2, 6, dtype=torch.long),
            "audio": torch.randn(2, steps_audio, DIMS.audio, generator=generator),
            "audio_mask": torch.ones(2, steps_audio, dtype=torch.bool),
            "vision": torch.randn(2, steps_vision, DIMS.vision, generator=generator),
            "vision_mask": torch.ones(2, steps_vision, dtype=torch.bool),
            "labels": torch.tensor([1.5, -2.0])}


def test_embeddings_are_fixed_unless_train_embeddings(tiny_bert_dir):
    config, model = build(tiny_bert_dir)
    embeddings = model.text_encoder.model.embeddings
    assert not any(p.requires_grad for p in embeddings.parameters())
    assert all(p.requires_grad for p in model.text_encoder.model.encoder.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = {names[id(p)] for g in model.parameter_groups(config.train) for p in g["params"]}
    assert not any(".embeddings." in n for n in grouped)

    config, model = build(tiny_bert_dir, "model.train_embeddings=true")  # the authors' code
    assert all(p.requires_grad for p in model.text_encoder.model.embeddings.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    language_model = {names[id(p)] for g in model.parameter_groups(config.train)
                      if g["name"] == "language_model" for p in g["params"]}
    assert "text_encoder.model.embeddings.word_embeddings.weight" in language_model


def test_loss_is_l1_or_the_authors_mse(tiny_bert_dir):
    data = batch()
    for loss, function in (("l1", F.l1_loss), ("mse", F.mse_loss)):
        _, model = build(tiny_bert_dir, f"model.loss={loss}")
        output = model.eval()(data)
        assert output.prediction.shape == (2,)
        torch.testing.assert_close(output.losses["task"],
                                   function(output.prediction, data["labels"]))


def test_injection_layer_must_exist(tiny_bert_dir):
    with pytest.raises(ValueError, match="injection_layer=2.*2 transformer layers"):
        build(tiny_bert_dir, "model.injection_layer=2")
    _, model = build(tiny_bert_dir, "model.injection_layer=0")  # on the embedding output
    assert model.eval()(batch()).prediction.isfinite().all()


def test_the_language_model_alone_is_refused(tiny_bert_dir):
    _, model = build(tiny_bert_dir)
    data = batch()
    with pytest.raises(RuntimeError, match="outside CENET.forward"):
        model.text_encoder.model(input_ids=data["input_ids"],
                                 attention_mask=data["attention_mask"])


def test_mmsa_padding_reads_fixed_length_arrays(tiny_bert_dir):
    """With attended steps N, a clip's prediction is that of its N-step zero-padded arrays,
    whatever its batch's padding; the default masks padding instead."""
    data = batch()
    longer = dict(data, audio=F.pad(data["audio"], (0, 0, 0, 3)),
                  audio_mask=F.pad(data["audio_mask"], (0, 3)))
    flat = "model.attention_scale=0.01"  # near-uniform attention: padding steps get weight
    _, mmsa = build(tiny_bert_dir, "model.audio_attended_steps=9", flat)
    _, default = build(tiny_bert_dir, flat)
    with torch.no_grad():
        mmsa.eval(), default.eval()
        torch.testing.assert_close(mmsa(data).prediction, mmsa(longer).prediction)
        torch.testing.assert_close(default(data).prediction, default(longer).prediction)
        # weights drawn large enough that attending to padding moves the prediction
        for module in (mmsa, default):
            for p in [*module.enhancement.parameters(), *module.head_dense.parameters(),
                      *module.head_out.parameters()]:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(3))
        assert (mmsa(data).prediction - default(data).prediction).abs().max() > 1e-3
