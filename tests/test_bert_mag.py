"""MAG-BERT's options beyond MMSA's defaults (the defaults are in tests/parity/test_bert_mag_parity.py):
where the gate acts (``injection_layer``), the authors' MSE loss, the pairing of unaligned steps,
and that the gate's hook never outlives a forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msakit.config import build_config
from msakit.data import load_dataset, make_loader
from msakit.errors import ConfigError
from msakit.models import FeatureDims, create_model

DIMS = FeatureDims(audio=74, vision=47)


@pytest.fixture(scope="module")
def batch(mosi_word_aligned):
    split = load_dataset(mosi_word_aligned).split("all").subset([0, 3, 7])
    loader = make_loader(split, "all-MiniLM-L6-v2", batch_size=3, word_aligned=True)
    return next(iter(loader))


def build(*overrides: str):
    torch.manual_seed(0)
    return create_model(build_config("bert_mag", list(overrides)).model, DIMS).eval()


def gate_inputs_and_next_layer_inputs(model, batch, site, following):
    """The output of ``site`` (what the gate reads) and the input of ``following``."""
    seen = {}

    def read_site(module, inputs, output):
        seen["site"] = output[0] if isinstance(output, tuple) else output

    def read_next(module, args, kwargs):
        seen["next"] = args[0] if args else kwargs["hidden_states"]

    # registered before the model's own hook: sees the site's output before the gate
    site_handle = site.register_forward_hook(read_site)
    next_handle = following.register_forward_pre_hook(read_next, with_kwargs=True)
    try:
        with torch.no_grad():
            model(batch)
    finally:
        site_handle.remove()
        next_handle.remove()
    return seen["site"], seen["next"]


@pytest.mark.parametrize("layer", [0, 2])
def test_the_gate_replaces_the_output_of_the_chosen_layer(batch, layer):
    model = build(f"model.injection_layer={layer}")
    layers = model.text_encoder.transformer_layers()
    site = model.text_encoder.model.embeddings if layer == 0 else layers[layer - 1]
    state, following = gate_inputs_and_next_layer_inputs(model, batch, site, layers[layer])
    expected = model.gate(state, batch["audio"], batch["vision"])
    torch.testing.assert_close(following, expected)
    assert not torch.allclose(following, state)  # the gate did shift the states


def test_an_injection_layer_past_the_last_layer_is_a_config_error():
    with pytest.raises(ConfigError, match="injection_layer=7.*6 layers"):
        build("model.injection_layer=7")


def test_the_authors_mse_loss(batch):
    l1, mse = build(), build("model.loss=mse")
    with torch.no_grad():
        out_l1, out_mse = l1(batch), mse(batch)
    torch.testing.assert_close(out_l1.prediction, out_mse.prediction)
    torch.testing.assert_close(out_mse.losses["task"],
                               F.mse_loss(out_mse.prediction, batch["labels"].float()))
    torch.testing.assert_close(out_l1.losses["task"],
                               F.l1_loss(out_l1.prediction, batch["labels"].float()))


def test_unaligned_steps_pair_with_tokens_by_position(batch):
    """Fewer steps than tokens are zero-padded, more are truncated: the t-th step goes with the
    t-th token."""
    model = build()
    tokens = batch["input_ids"].shape[1]
    short = {**batch, "audio": batch["audio"][:, :tokens - 4],
             "vision": batch["vision"][:, :tokens - 4]}
    padded = {**batch, "audio": F.pad(short["audio"], (0, 0, 0, 4)),
              "vision": F.pad(short["vision"], (0, 0, 0, 4))}
    longer = {**batch, "audio": F.pad(batch["audio"], (0, 0, 0, 5), value=9.0),
              "vision": F.pad(batch["vision"], (0, 0, 0, 5), value=9.0)}
    with torch.no_grad():
        torch.testing.assert_close(model(short).prediction, model(padded).prediction)
        torch.testing.assert_close(model(longer).prediction, model(batch).prediction)


def test_the_gate_hook_is_removed_after_every_forward_even_a_failing_one(batch):
    model = build()
    embeddings = model.text_encoder.model.embeddings
    with torch.no_grad():
        model(batch)
    assert len(embeddings._forward_hooks) == 0
    broken = {**batch, "vision": batch["vision"][..., :10]}  # wrong feature size
    with pytest.raises(ValueError, match="vision"):
        model(broken)
    assert len(embeddings._forward_hooks) == 0
