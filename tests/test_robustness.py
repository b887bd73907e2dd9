"""Test-time perturbations (msakit evaluate --robustness) on the real 229 MOSI clips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msakit.data import load_dataset
from msakit.robustness import Condition, default_conditions, feature_std, perturb_split

MASK = "[MASK]"


@pytest.fixture(scope="module")
def clips(mosi_word_aligned):
    return load_dataset(mosi_word_aligned).splits["all"]


def test_default_conditions_cover_removals_noise_masking_and_dropout():
    names = [c.name for c in default_conditions()]
    assert names[0] == "clean"
    for expected in ("remove:text", "remove:audio", "remove:vision", "remove:text+audio",
                     "remove:audio+vision", "noise:0.5", "time_mask:0.1", "time_mask:0.9",
                     "word_dropout:0.1", "word_dropout:0.9"):
        assert expected in names


def test_removal_zeroes_the_modality_at_its_length_and_masks_every_word(clips):
    std = feature_std(clips)
    out = perturb_split(clips, Condition("remove", removed=("text", "audio")), std, MASK)
    for row in range(len(clips)):
        assert out.audio[row].shape == clips.audio[row].shape and not out.audio[row].any()
        assert np.array_equal(out.vision[row], clips.vision[row])
        assert set(out.words[row]) == {MASK} and len(out.words[row]) == len(clips.words[row])
    assert clips.audio[0].any() and MASK not in clips.words[0]  # the input is untouched


def test_noise_is_scaled_by_the_training_std_and_identical_for_the_same_seed(clips):
    std = feature_std(clips)
    noisy = perturb_split(clips, Condition("noise", 0.5), std, MASK, seed=3)
    again = perturb_split(clips, Condition("noise", 0.5), std, MASK, seed=3)
    other = perturb_split(clips, Condition("noise", 0.5), std, MASK, seed=4)
    delta = np.concatenate([n - c for n, c in zip(noisy.vision, clips.vision)])
    used = std["vision"] > 0
    ratio = delta[:, used].std(axis=0) / std["vision"][used]
    assert np.median(ratio) == pytest.approx(0.5, rel=0.1)
    assert all(np.array_equal(a, b) for a, b in zip(noisy.vision, again.vision))
    assert not all(np.array_equal(a, b) for a, b in zip(noisy.vision, other.vision))
    assert noisy.words == clips.words


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_time_masking_and_word_dropout_hit_the_rate(clips, rate):
    masked = perturb_split(clips, Condition("time_mask", rate), {}, MASK)
    steps = np.concatenate([a for a in clips.audio])
    zeroed = np.concatenate([a for a in masked.audio])
    was_nonzero = steps.any(axis=1)
    assert (~zeroed[was_nonzero].any(axis=1)).mean() == pytest.approx(rate, abs=0.05)
    dropped = perturb_split(clips, Condition("word_dropout", rate), {}, MASK)
    words = [w for ws in dropped.words for w in ws]
    assert np.mean([w == MASK for w in words]) == pytest.approx(rate, abs=0.05)
    assert dropped.texts[0] == " ".join(dropped.words[0])


@pytest.mark.slow
def test_removing_text_hurts_a_trained_model_more_than_removing_audio(mosi_word_aligned,
                                                                      tmp_path):
    from msakit.config import build_config
    from msakit.robustness import evaluate_robustness
    from msakit.training import run_experiment

    config = build_config("lf_dnn", [
        f"data.path={mosi_word_aligned}", "data.folds=5", f"run.output_dir={tmp_path}",
        "train.epochs=30", "train.patience=10", "train.lr=3e-3",
        "model.freeze_language_model=true"])  # at lr 1e-3 it learns little in a few epochs
    run_dir, _ = run_experiment(config, seeds=[1], progress=False)
    conditions = [Condition("clean"), Condition("remove", removed=("text",)),
                  Condition("remove", removed=("audio",))]
    steps = []
    report = evaluate_robustness(run_dir, conditions,
                                 progress=lambda done, total, what: steps.append((done, total)))
    assert steps == [(k, 15) for k in range(1, 16)]  # 5 checkpoints x 3 conditions
    by_name = {row["condition"]: row["metrics"] for row in report["conditions"]}
    text_loss = by_name["remove:text"]["MAE"]["difference"]
    audio_loss = by_name["remove:audio"]["MAE"]["difference"]
    assert text_loss > audio_loss
    assert text_loss > 0 and by_name["remove:text"]["MAE"]["ci_low"] > 0
    assert by_name["clean"]["MAE"]["difference"] == 0
    saved = json.loads((run_dir / "robustness.json").read_text())
    assert [r["condition"] for r in saved["conditions"]] == ["clean", "remove:text",
                                                             "remove:audio"]
    assert (run_dir / "robustness-MAE.png").stat().st_size > 0
    markdown = (run_dir / "robustness.md").read_text()
    assert "| without text |" in markdown and "Non0_acc_2 (%)" in markdown


def test_conditions_are_named_in_words():
    from msakit.robustness import condition_label

    labels = {c.name: c.label for c in default_conditions()}
    assert labels["remove:text"] == "without text"
    assert labels["remove:text+audio"] == "without text and audio"
    assert labels["remove:audio+vision"] == "without audio and vision"
    assert labels["word_dropout:0.3"] == "30 % of words masked"
    assert labels["time_mask:0.1"] == "10 % of audio/vision steps zeroed"
    assert labels["noise:0.5"] == "noise 0.5 × std on audio and vision"
    assert len(set(labels.values())) == len(labels)  # no two conditions read alike
    # a robustness.json written before labels existed still gets words
    assert condition_label({"family": "remove", "level": None,
                            "removed": ["audio", "vision"]}) == "without audio and vision"


def test_robustness_cells_show_accuracies_in_percent():
    from msakit.robustness import format_cell

    value = {"mean": 0.69899, "std": 0.0412, "difference": -0.0523, "ci_low": -0.0911,
             "ci_high": -0.0135}
    assert format_cell(value, "remove", metric="Non0_acc_2") == \
        "69.9 ± 4.1 (Δ -5.2 [-9.1, -1.4])"
    assert format_cell(value, "clean", metric="MAE") == "0.699 ± 0.041"


def test_robustness_plot_keeps_a_sensible_y_range(tmp_path):
    from msakit.robustness import MIN_Y_SPAN, _y_limits

    # a 0.4-point change must not fill the axis
    low, high = _y_limits(np.array([69.8, 70.0, 70.2]), "Non0_acc_2")
    assert high - low >= MIN_Y_SPAN["percent"] and low < 69.8 and high > 70.2
    low, high = _y_limits(np.array([0.9, 1.6]), "MAE")  # a wide range is kept, with a margin
    assert low < 0.9 and high > 1.6 and high - low < 0.9
