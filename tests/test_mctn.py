"""MCTN's options beyond the parity fixture (tests/parity/test_mctn_parity.py): the default
recurrence over time (every step of a translation written, a clip independent of its batch),
MMSA's batch-axis recurrence, teacher forcing, and prediction without the decoders."""

from __future__ import annotations

import pytest
import torch

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


def decoder_inputs(model, data: dict) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple]:
    """The ``previous`` frame each step of the first translation (text -> vision) reads, the
    outputs of its steps, and the vision target in the recurrence layout."""
    reads, outputs = [], []

    def record(module, args, output):
        reads.append(args[0])
        outputs.append(output[0])

    hook = model.decoder1.register_forward_hook(record)
    try:
        with torch.no_grad():
            model(data)
    finally:
        hook.remove()
    vision = model.recurrence_layout(model.inputs(data)[2])
    steps = vision.shape[0] - (model.config.recurrence == "mmsa_batch_axis")
    return reads[:steps], outputs[:steps], vision


def test_time_recurrence_writes_every_step_and_teacher_forces_from_a_zero_frame(tiny_bert_dir):
    model = build(tiny_bert_dir, "model.teacher_forcing_ratio=1.0").eval()
    data = batch()
    reads, outputs, vision = decoder_inputs(model, data)
    assert len(reads) == vision.shape[0] == 6  # one decoder step per time step
    assert torch.equal(reads[0], torch.zeros_like(vision[0]))
    for step in range(1, 6):
        assert torch.equal(reads[step], vision[step - 1])  # the target's previous frame
    _, translated = model.translate(model.encoder1, model.decoder1,
                                    *(model.recurrence_layout(x) for x in model.inputs(data)[::2]))
    assert translated[0].abs().sum() > 0  # step 0 is written (MMSA's loop leaves it zero)


def test_free_running_decoder_reads_its_own_outputs(tiny_bert_dir):
    model = build(tiny_bert_dir, "model.teacher_forcing_ratio=0.5").eval()  # eval: free-running
    reads, outputs, _ = decoder_inputs(model, batch())
    for step in range(1, 6):
        assert torch.equal(reads[step], outputs[step - 1])


def test_mmsa_batch_axis_runs_over_the_clips_and_leaves_clip_0_at_zero(tiny_bert_dir):
    model = build(tiny_bert_dir, "model.recurrence=mmsa_batch_axis",
                  "model.teacher_forcing_ratio=1.0").eval()
    data = batch()
    reads, _, vision = decoder_inputs(model, data)
    assert vision.shape[:2] == (3, 6)  # the batch-first tensor as is: the loop runs over clips
    assert len(reads) == 2 and torch.equal(reads[0], vision[0])  # starts from clip 0's target
    source, target = (model.recurrence_layout(x) for x in model.inputs(data)[::2])
    _, translated = model.translate(model.encoder1, model.decoder1, source, target)
    assert torch.equal(translated[0], torch.zeros_like(translated[0]))
    with torch.no_grad():  # a clip's prediction depends on the other clips of its batch
        together = model(data).prediction
        alone = model({k: v[1:2] for k, v in data.items()}).prediction
    assert (together[1] - alone[0]).abs() > 1e-6


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
