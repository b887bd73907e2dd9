"""MCTN's options beyond the parity fixture (tests/parity/test_mctn_parity.py): the default
recurrence over time (every step of a translation written, a clip independent of its batch),
MMSA's batch-axis recurrence, teacher forcing, and prediction without the decoders."""

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
    folder = tmp_path_factory.mktemp("mctn_tiny_bert")
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(folder)
    return str(folder)


def build(bert_dir: str, *overrides: str, dims: FeatureDims = DIMS):
    torch.manual_seed(1)
    config = build_config("mctn", [f"model.language_model={bert_dir}", "model.seq_len=6",
                                   "model.hidden=4", *overrides])
    return create_model(config.model, dims)


def batch(size: int = 3, dims: FeatureDims = DIMS) -> dict:
    generator = torch.Generator().manual_seed(2)
    lengths = torch.tensor([6, 4, 2, 5, 3][:size])
    mask = torch.arange(6)[None] < lengths[:, None]
    return {"input_ids": torch.randint(3, 60, (size, 6), generator=generator),
            "attention_mask": mask.long(),
            "audio": torch.randn(size, 6, dims.audio, generator=generator),
            "audio_mask": mask, "vision": torch.randn(size, 6, dims.vision, generator=generator),
            "vision_mask": mask, "labels": torch.linspace(-2, 2, size)}


def reference_translation(model, source: torch.Tensor, target: torch.Tensor, reads):
    """The first translation (text -> vision) as MMSA's code computes each step: additive
    attention over the encoder states, the decoder's BiLSTM called on ``[y_prev; c]`` from a zero
    state, ``fc_out`` on ``[o; c]``, the summed final states as the next query. ``reads(i, y)``:
    the frame step ``i + 1`` reads, given step ``i``'s frame ``y``. MMSA's batch-axis mode starts
    from the target's frame 0 and leaves step 0 at zero."""
    decoder, hidden = model.decoder1, model.config.hidden
    mmsa = model.config.recurrence == "mmsa_batch_axis"
    states, query = model.encoder1(source)
    keys = states.transpose(0, 1)  # (N, S, h)
    previous = target[0] if mmsa else torch.zeros_like(target[0])
    frames = [torch.zeros_like(target[0])] if mmsa else []
    for i in range(len(frames), target.shape[0]):
        expanded = query.unsqueeze(1).expand(-1, keys.shape[1], -1)
        energy = torch.tanh(decoder.attention.attn(torch.cat([expanded, keys], dim=2)))
        weights = torch.softmax(decoder.attention.v(energy).squeeze(2), dim=1)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)
        output, (final, _) = decoder.rnn(torch.cat([previous, context], dim=1).unsqueeze(0))
        output = output[0, :, :hidden] + output[0, :, hidden:]
        frames.append(decoder.fc_out(torch.cat([output, context], dim=1)))
        query = final[-1] + final[-2]
        if i + 1 < target.shape[0]:
            previous = reads(i, frames[-1])
    return torch.stack(frames)


def check_translation(model, data: dict, reads, seed: int = 0) -> torch.Tensor:
    """msakit's first translation equals :func:`reference_translation` (the same draws)."""
    text, _, vision = (model.recurrence_layout(x) for x in model.inputs(data))
    with torch.no_grad():
        torch.manual_seed(seed)
        _, translated = model.translate(model.encoder1, model.decoder1, text, vision,
                                        model.dims.vision)
        torch.manual_seed(seed)
        expected = reference_translation(model, text, vision, lambda i, y: reads(i, y, vision))
    assert translated.shape == vision.shape
    torch.testing.assert_close(translated, expected, rtol=1e-5,
                               atol=1e-6 * float(expected.abs().max()))
    return translated


def test_time_recurrence_writes_every_step_and_teacher_forces_from_a_zero_frame(tiny_bert_dir):
    model = build(tiny_bert_dir, "model.teacher_forcing_ratio=1.0").eval()
    translated = check_translation(model, batch(), lambda i, y, target: target[i])
    assert translated.shape[0] == 6  # one decoder step per time step
    assert translated[0].abs().sum() > 0  # step 0 is written (MMSA's loop leaves it zero)
    different = check_translation(  # the check can fail: reading the own frames differs
        build(tiny_bert_dir, "model.teacher_forcing_ratio=0.0").eval(), batch(),
        lambda i, y, target: y)
    assert (different - translated).abs().max() > 1e-4


def test_free_running_decoder_reads_its_own_outputs(tiny_bert_dir):
    model = build(tiny_bert_dir, "model.teacher_forcing_ratio=0.5").eval()  # eval: free-running
    check_translation(model, batch(), lambda i, y, target: y)


def test_training_teacher_forcing_draws_per_step_and_clip(tiny_bert_dir):
    model = build(tiny_bert_dir, "model.teacher_forcing_ratio=0.5").train()

    def reads(i, y, target):  # the draws in msakit's order: one per clip after each step
        return torch.where(torch.rand(target.shape[1], 1) < 0.5, target[i], y)

    check_translation(model, batch(), reads, seed=5)


def test_mmsa_batch_axis_runs_over_the_clips_and_leaves_clip_0_at_zero(tiny_bert_dir):
    model = build(tiny_bert_dir, "model.recurrence=mmsa_batch_axis",
                  "model.teacher_forcing_ratio=1.0").eval()
    data = batch()
    vision = model.recurrence_layout(model.inputs(data)[2])
    assert vision.shape[:2] == (3, 6)  # the batch-first tensor as is: the loop runs over clips
    translated = check_translation(model, data, lambda i, y, target: target[i])
    assert torch.equal(translated[0], torch.zeros_like(translated[0]))
    with torch.no_grad():  # a clip's prediction depends on the other clips of its batch
        together = model(data).prediction
        alone = model({k: v[1:2] for k, v in data.items()})
    assert (together[1] - alone.prediction[0]).abs() > 1e-6
    assert alone.losses["text_to_vision"] == F.mse_loss(  # a one-clip batch: nothing decoded
        torch.zeros(1, 6, 16), model.inputs({k: v[1:2] for k, v in data.items()})[2])


def test_teacher_forcing_changes_losses_not_predictions(tiny_bert_dir):
    data = batch()
    with torch.no_grad():
        forced = build(tiny_bert_dir, "model.teacher_forcing_ratio=1.0").eval()(data)
        free = build(tiny_bert_dir, "model.teacher_forcing_ratio=0.5").eval()(data)
        never = build(tiny_bert_dir, "model.teacher_forcing_ratio=0.0").eval()(data)
    torch.testing.assert_close(forced.prediction, free.prediction, rtol=0, atol=0)
    assert forced.losses["text_to_vision"] != free.losses["text_to_vision"]
    assert free.losses == never.losses  # evaluation below 1.0 decodes freely whatever the ratio

    model = build(tiny_bert_dir, "model.teacher_forcing_ratio=0.5").train()
    torch.manual_seed(3)
    first = model(data).losses["text_to_vision"]
    torch.manual_seed(4)
    assert model(data).losses["text_to_vision"] != first  # training draws per step and clip


def test_prediction_without_labels_skips_the_decoders(tiny_bert_dir):
    model = build(tiny_bert_dir).eval()
    data = batch()
    calls = []
    hook = model.decoder1.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        with_labels = model(data)
        unlabelled = model({k: v for k, v in data.items() if k != "labels"})
    hook.remove()
    assert set(with_labels.losses) == {"task", "text_to_vision", "vision_to_text",
                                       "joint_to_audio"}
    assert unlabelled.losses == {} and len(calls) == 2 * 6  # only the labelled pass decoded
    torch.testing.assert_close(unlabelled.prediction, with_labels.prediction, rtol=0, atol=0)


def test_every_modality_is_padded_to_the_widest(tiny_bert_dir):
    dims = FeatureDims(audio=20, vision=7)  # wider than the 16-wide text: MMSA's code would fail
    model = build(tiny_bert_dir, dims=dims)
    assert model.feature_dim == 20
    text, audio, vision = model.inputs(batch(dims=dims))
    assert text.shape == audio.shape == vision.shape == (3, 6, 20)
    assert torch.equal(text[..., 16:], torch.zeros_like(text[..., 16:]))
    assert model.train()(batch(dims=dims)).prediction.shape == (3,)
