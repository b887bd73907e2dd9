"""TFN against MMSA's code (thuiar/MMSA ``tfn``), from the fixture of ``tools/parity/tfn.py``
(no official code needed here).

The official run: a tiny random BERT's token states as MMSA's fixed text features, audio/vision
summed over the real steps / 50 (MMSA's mean over its 50-step zero-padded arrays), small sizes,
float64, six real clips in three batches of two. With dropout 0, MMSA's ``do_train`` (Adam
without weight decay, a step per batch, L1 loss) for three epochs with scripted validation
losses; msakit runs the same through ``Trainer.fit`` with MMSA's reading of its arrays
(``text_lstm_reads_padding: true``, ``audio_average_steps``/``vision_average_steps: 50``) and
must match every prediction, unimodal feature and loss, every gradient, every parameter and
BatchNorm buffer after each step, and the epoch early stopping ends on. At MMSA's MOSI dropout
rates: the same dropout calls (rate and input shape, in call order) in train mode, and the same
eval-mode predictions.

Names: msakit keeps MMSA's (``video_subnet`` -> ``vision_subnet``); MMSA's constant
``output_range``/``output_shift`` parameters are msakit's ``output_bound`` (6 = 2 * 3, -3 = -3).
"""

from __future__ import annotations

import torch
from _mmsa_parity import (
    UNIMODAL_FEATURES,
    check_dropout_map_and_eval_forward,
    check_fixture_origin,
    check_training,
    hidden_overrides,
    mmsa_reading_overrides,
    module_fixtures,
    training_overrides,
)

fixture, bert_dir = module_fixtures("tfn")


def to_msakit(name: str, value: torch.Tensor):
    if name in ("output_range", "output_shift"):  # constants: msakit's output_bound
        return None
    return name.replace("video_subnet.", "vision_subnet."), value


def overrides(fixture, bert_dir, dropouts) -> list[str]:
    sizes = fixture["sizes"]
    audio_p, video_p, text_p, post_p = dropouts
    return training_overrides(fixture, bert_dir) + mmsa_reading_overrides(fixture) + \
        hidden_overrides(fixture) + [
            f"model.text_out={sizes['text_out']}",
            f"model.post_fusion_dim={sizes['post_fusion_dim']}", f"model.text_dropout={text_p}",
            f"model.audio_dropout={audio_p}", f"model.vision_dropout={video_p}",
            f"model.post_fusion_dropout={post_p}",
        ]


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    check_fixture_origin(fixture)
    # MMSA's output range, 6 * sigmoid(y) - 3, is msakit's default output_bound = 3
    assert fixture["initial_state"]["output_range"].item() == 6.0
    assert fixture["initial_state"]["output_shift"].item() == -3.0


def test_tfn_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    check_training("tfn", overrides(fixture, bert_dir, (0, 0, 0, 0)), fixture, to_msakit,
                   tmp_path, monkeypatch, UNIMODAL_FEATURES)


def test_tfn_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    check_dropout_map_and_eval_forward(
        "tfn", overrides(fixture, bert_dir, fixture["official_dropouts"]), fixture, to_msakit)
