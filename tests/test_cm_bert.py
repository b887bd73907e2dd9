"""CM-BERT's masked multimodal attention by hand (eq. 1-8 and the layer after it), the options
the parity test does not exercise (per-clip scaling, ``scale_audio``), and its parameter
groups."""

from __future__ import annotations

import pytest
import torch

from msakit.config import build_config
from msakit.models import FeatureDims, create_model
from msakit.models.cm_bert import MaskedMultimodalAttention


def attention(feature_scale: str, scale_audio: bool) -> MaskedMultimodalAttention:
    torch.manual_seed(0)
    module = MaskedMultimodalAttention(hidden=4, audio_dim=3, projection_dim=2,
                                       attention_dropout=0.0, hidden_dropout=0.0,
                                       feature_scale=feature_scale, scale_audio=scale_audio)
    with torch.no_grad():
        module.text_weight.fill_(0.7)
        module.audio_weight.fill_(1.3)
        module.bias.fill_(-0.2)
    return module.double().eval()


def by_hand(module, hidden, audio, mask):
    """Eq. (1)-(8) for each clip alone, on its real tokens only."""
    out = []
    for b in range(hidden.shape[0]):
        n = int(mask[b].sum())
        x, a = hidden[b, :n], audio[b, :n]
        t = x @ module.proj_t.weight.T
        t = t / t.norm().sqrt()  # eq. (2) over the clip's real tokens
        p = a @ module.proj_a.weight.T
        if module.scale_audio:
            p = p / p.norm().sqrt()  # eq. (3)
        fused = (module.text_weight * (t @ t.T).relu() + module.audio_weight * (p @ p.T).relu()
                 + module.bias)
        weights = fused.softmax(-1)
        layer = module.layer_norm(module.dense(weights @ x + x))
        out.append(layer[0])
    return torch.stack(out)


@pytest.mark.parametrize("scale_audio", [False, True])
def test_per_clip_scaling_is_the_equations_on_each_clip_alone(scale_audio):
    module = attention("sample", scale_audio)
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 5, 4, generator=generator, dtype=torch.float64)
    audio = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(module(hidden, audio, mask), by_hand(module, hidden, audio,
                                                                        mask))
        # what stands at the padding positions does not matter
        changed_hidden, changed_audio = hidden.clone(), audio.clone()
        changed_hidden[1, 3:] += 5.0
        changed_audio[1, 3:] -= 3.0
        torch.testing.assert_close(module(changed_hidden, changed_audio, mask),
                                   module(hidden, audio, mask))


def test_scale_audio_changes_the_audio_attention_only_when_set():
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(1, 4, 4, generator=generator, dtype=torch.float64)
    audio = torch.randn(1, 4, 3, generator=generator, dtype=torch.float64) * 10
    mask = torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        plain = attention("sample", False)(hidden, audio, mask)
        scaled = attention("sample", True)(hidden, audio, mask)
    assert (plain - scaled).abs().max() > 1e-3


def test_batch_scaling_reads_the_other_clips_and_the_padding():
    """The official computation: one norm over the whole padded batch."""
    module = attention("batch", False)
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 5, 4, generator=generator, dtype=torch.float64)
    audio = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        both = module(hidden, audio, mask)
        first_alone = module(hidden[:1], audio[:1], mask[:1])
        changed = hidden.clone()
        changed[1, 3:] += 5.0  # padding of the second clip
        assert (module(changed, audio, mask)[0] - both[0]).abs().max() > 1e-6
    assert (both[0] - first_alone[0]).abs().max() > 1e-6


def test_parameter_groups_follow_the_official_rule():
    config = build_config("cm_bert")
    model = create_model(config.model, FeatureDims(audio=5, vision=0))
    groups = {g["name"]: g for g in model.parameter_groups(config.train)}
    names = {id(p): n for n, p in model.named_parameters()}

    def members(group):
        return {names[id(p)] for p in groups[group]["params"]}

    assert members("attention") == {"attention.proj_t.weight", "attention.proj_a.weight",
                                    "attention.text_weight", "attention.audio_weight",
                                    "attention.dense.weight", "attention.layer_norm.weight"}
    assert {"attention.bias", "attention.dense.bias", "attention.layer_norm.bias"} \
        <= members("no_decay")
    assert (groups["attention"]["lr"], groups["attention"]["weight_decay"]) == (0.01, 0.01)
    assert (groups["no_decay"]["lr"], groups["no_decay"]["weight_decay"]) == (2e-5, 0.0)
    assert (groups["other"]["lr"], groups["other"]["weight_decay"]) == (2e-5, 0.01)
    assert all(n.startswith("text_encoder.model.encoder.") for n in members("other"))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= frozen
    assert all(n.startswith(("text_encoder.model.embeddings.", "text_encoder.model.pooler.",
                             "classifier.")) for n in frozen)
    trained = build_config("cm_bert", ["model.freeze_classifier=false"])
    unfrozen = create_model(trained.model, FeatureDims(audio=5, vision=0))
    assert unfrozen.classifier.weight.requires_grad
