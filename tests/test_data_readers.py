"""Readers and validation on the real MOSI files, and on an MMSA pickle built from them."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from msakit.data import DataError, check_feature_dims, feature_dims_for, load_dataset, safe_load
from msakit.models.base import FeatureDims

PAD = 50


@pytest.fixture(scope="module")
def word_aligned(mosi_word_aligned):
    return load_dataset(mosi_word_aligned)


def build_mmsa(dataset, aligned: bool = False, unimodal: bool = False) -> dict:
    """An MMSA-format dict from the real 229 clips: padded to 50 steps, split by video
    (6 videos train, 2 valid, 2 test), some -inf in audio inside the true lengths.

    ``aligned=False``: ``audio_lengths``/``vision_lengths`` give the true lengths.
    ``aligned=True``: no length keys; ``text_bert``'s mask gives them (length + 2 for
    [CLS]/[SEP], so the real features are placed after one leading zero row, MMSA-style).
    """
    split = dataset.splits["all"]
    videos = sorted(set(split.video_ids))
    parts = {"train": videos[:6], "valid": videos[6:8], "test": videos[8:]}
    out = {}
    for part, part_videos in parts.items():
        rows = [i for i, v in enumerate(split.video_ids) if v in part_videos]
        n = len(rows)
        fields = {
            "raw_text": np.array([split.texts[i] for i in rows], dtype=object),
            "id": np.array([split.ids[i] for i in rows], dtype=object),
            "regression_labels": split.labels[rows].astype(np.float32),
        }
        lengths = np.array([split.audio[i].shape[0] for i in rows])
        for modality in ("audio", "vision"):
            clips = getattr(split, modality)
            dim = clips[0].shape[1]
            padded = np.zeros((n, PAD, dim), dtype=np.float32)
            for j, i in enumerate(rows):
                offset = 1 if aligned else 0
                padded[j, offset: offset + clips[i].shape[0]] = clips[i]
            fields[modality] = padded
            if not aligned:
                fields[f"{modality}_lengths"] = lengths.copy()
        if aligned:
            text_bert = np.zeros((n, 3, PAD), dtype=np.float32)
            for j, length in enumerate(lengths):
                text_bert[j, 1, : length + 2] = 1
            fields["text_bert"] = text_bert
        if unimodal:
            for key in ("T", "A", "V"):
                fields[f"regression_labels_{key}"] = np.clip(fields["regression_labels"], -1, 1)
        out[part] = fields
    return out


def write(tmp_path, content, name="data.pkl", protocol=pickle.DEFAULT_PROTOCOL):
    path = tmp_path / name
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=protocol)
    return path


# --------------------------------------------------------------------------------------------
# Real files
# --------------------------------------------------------------------------------------------

def test_word_aligned_pickle_counts_and_dims(word_aligned):
    assert word_aligned.name == "mosi"
    assert word_aligned.word_aligned
    assert list(word_aligned.splits) == ["all"]
    split = word_aligned.splits["all"]
    assert len(split) == 229
    assert len(set(split.video_ids)) == 10
    assert word_aligned.feature_dims == {"audio": 74, "vision": 47}
    assert word_aligned.modalities == ("text", "audio", "vision")
    for audio, vision, words, text in zip(split.audio, split.vision, split.words, split.texts):
        assert audio.shape == (len(words), 74) and vision.shape == (len(words), 47)
        assert audio.dtype == np.float32
        assert text == " ".join(words)
    assert min(len(w) for w in split.words) == 2 and max(len(w) for w in split.words) == 44
    assert split.ids[0] == "WKA5OygbEKI$_$1"  # segment WKA5OygbEKI[0] is clip 1
    assert word_aligned.replaced_nonfinite == {}


def test_label_csv_counts(mosi_label_dir):
    data = load_dataset(mosi_label_dir)
    assert data.name == "mosi"
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 1281, "valid": 229,
                                                             "test": 685}
    assert data.feature_dims == {"audio": 0, "vision": 0}
    assert data.modalities == ("text",)
    train = data.splits["train"]
    assert train.ids[0] == "03bSnISJMiM$_$1" and train.video_ids[0] == "03bSnISJMiM"
    assert train.texts[0] == "anyhow it was really good"
    assert train.labels[0] == pytest.approx(2.4)
    assert train.audio is None and train.vision is None
    # the csv file itself is accepted too
    assert len(load_dataset(mosi_label_dir / "label.csv").splits["test"]) == 685


def test_word_aligned_ids_match_label_csv(word_aligned, mosi_label_dir):
    """The segment -> clip id mapping (k -> k+1) agrees with label.csv's labels for all 229."""
    valid = load_dataset(mosi_label_dir).splits["valid"]
    label_of = dict(zip(valid.ids, valid.labels))
    split = word_aligned.splits["all"]
    assert set(split.ids) == set(label_of)
    for clip_id, label in zip(split.ids, split.labels):
        assert label == pytest.approx(label_of[clip_id], abs=1e-5)


# --------------------------------------------------------------------------------------------
# MMSA pickle built from the real clips
# --------------------------------------------------------------------------------------------

def test_mmsa_round_trip_with_nonfinite(word_aligned, tmp_path):
    content = build_mmsa(word_aligned)
    infs = [(0, 0, 3), (0, 1, 5), (4, 0, 0)]  # (row, step, dim) inside the true lengths
    for row, step, dim in infs:
        content["train"]["audio"][row, step, dim] = -np.inf
    content["valid"]["vision"][2, 0, 7] = np.nan
    content["test"]["audio"][0, PAD - 1, 0] = -np.inf  # in the padding: dropped, not counted
    path = write(tmp_path, content, "unaligned_50.pkl")

    data = load_dataset(path, dataset="mosi")
    assert data.name == "mosi" and not data.word_aligned
    assert data.feature_dims == {"audio": 74, "vision": 47}
    assert data.replaced_nonfinite == {"train/audio": 3, "valid/vision": 1}
    original = word_aligned.splits["all"]
    by_id = {clip_id: i for i, clip_id in enumerate(original.ids)}
    total = 0
    for part in ("train", "valid", "test"):
        split = data.splits[part]
        total += len(split)
        assert split.words is None
        for j, clip_id in enumerate(split.ids):
            i = by_id[clip_id]
            assert split.texts[j] == original.texts[i]
            assert split.labels[j] == original.labels[i]
            assert split.video_ids[j] == original.video_ids[i]
            expected_audio = original.audio[i].copy()
            if part == "train":
                for row, step, dim in infs:
                    if row == j:
                        expected_audio[step, dim] = 0.0
            np.testing.assert_array_equal(split.audio[j], expected_audio)
            expected_vision = original.vision[i].copy()
            if part == "valid" and j == 2:
                expected_vision[0, 7] = 0.0
            np.testing.assert_array_equal(split.vision[j], expected_vision)
    assert total == 229
    assert np.isfinite(np.concatenate(data.splits["train"].audio)).all()


def test_mmsa_family_detection_and_auto_format(word_aligned, tmp_path):
    path = write(tmp_path, build_mmsa(word_aligned))
    assert load_dataset(path).name == "custom"  # 74/47 is not an MMSA release's pair
    assert load_dataset(path, format="mmsa").name == "custom"
    content = build_mmsa(word_aligned)
    for fields in content.values():
        fields["audio"] = fields["audio"][:, :, :5]
        fields["vision"] = fields["vision"][:, :, :20]
    assert load_dataset(write(tmp_path, content, "mosi.pkl")).name == "mosi"


def test_mmsa_aligned_lengths_from_text_mask(word_aligned, tmp_path):
    path = write(tmp_path, build_mmsa(word_aligned, aligned=True))
    data = load_dataset(path)
    original = word_aligned.splits["all"]
    by_id = {clip_id: i for i, clip_id in enumerate(original.ids)}
    split = data.splits["valid"]
    for j, clip_id in enumerate(split.ids):
        i = by_id[clip_id]
        # text mask counts [CLS] and [SEP]: one leading zero row, the words, one trailing zero row
        assert split.audio[j].shape == (original.audio[i].shape[0] + 2, 74)
        np.testing.assert_array_equal(split.audio[j][1:-1], original.audio[i])


def test_mmsa_unimodal_labels(word_aligned, tmp_path):
    # MOSI's labels in [-3, 3] are outside SIMS' range: clip them
    content = build_mmsa(word_aligned, unimodal=True)
    for fields in content.values():
        fields["regression_labels"] = np.clip(fields["regression_labels"], -1, 1)
    data = load_dataset(write(tmp_path, content, "sims.pkl"), dataset="sims")
    assert data.name == "sims" and data.label_range == (-1.0, 1.0)
    assert sorted(data.splits["train"].extra_labels) == ["A", "T", "V"]
    np.testing.assert_array_equal(data.splits["test"].extra_labels["T"],
                                  data.splits["test"].labels)


def test_mmsa_label_out_of_sims_range(word_aligned, tmp_path):
    path = write(tmp_path, build_mmsa(word_aligned, unimodal=True))
    with pytest.raises(DataError, match=r"\[train\].*outside \[-1, 1\] of dataset 'sims'"):
        load_dataset(path, dataset="sims")


# --------------------------------------------------------------------------------------------
# Bad input -> clear errors
# --------------------------------------------------------------------------------------------

def test_missing_key(word_aligned, tmp_path):
    content = build_mmsa(word_aligned)
    del content["valid"]["regression_labels"]
    with pytest.raises(DataError, match=r"data\.pkl \[valid\]: missing field 'regression_labels'"):
        load_dataset(write(tmp_path, content))


def test_missing_split(word_aligned, tmp_path):
    content = build_mmsa(word_aligned)
    del content["test"]
    with pytest.raises(DataError, match=r"data\.pkl: missing split\(s\) \['test'\]"):
        load_dataset(write(tmp_path, content))


def test_mismatched_lengths(word_aligned, tmp_path):
    content = build_mmsa(word_aligned)
    n = len(content["train"]["raw_text"])
    content["train"]["vision"] = content["train"]["vision"][:-1]
    with pytest.raises(DataError, match=rf"\[train\]: field 'vision' has shape \({n - 1}, 50, "
                                        rf"47\), expected \({n}, L, D\)"):
        load_dataset(write(tmp_path, content))
    content = build_mmsa(word_aligned)
    content["test"]["audio_lengths"][3] = PAD + 1
    with pytest.raises(DataError, match=r"\[test\]: audio_lengths .* is 51, outside 0\.\.50"):
        load_dataset(write(tmp_path, content))


def test_inconsistent_dims(word_aligned, tmp_path):
    content = build_mmsa(word_aligned)
    content["test"]["audio"] = content["test"]["audio"][:, :, :73]
    with pytest.raises(DataError, match=r"inconsistent feature dims: split 'train' has audio "
                                        r"74-d .* split 'test' has audio 73-d"):
        load_dataset(write(tmp_path, content))


def test_wrong_dims_for_model(word_aligned, mosi_label_dir):
    check_feature_dims(word_aligned, FeatureDims(audio=74, vision=47))
    assert feature_dims_for(word_aligned) == FeatureDims(audio=74, vision=47)
    assert feature_dims_for(word_aligned, ["text", "vision"]) == FeatureDims(audio=0, vision=47)
    assert feature_dims_for(load_dataset(mosi_label_dir)) == FeatureDims(audio=0, vision=0)
    check_feature_dims(word_aligned, FeatureDims(audio=0, vision=47))  # model ignores audio
    with pytest.raises(DataError, match=r"wrong feature dimensions for the model: audio is 74-d "
                                        r"but the model expects 5-d; vision is 47-d but the "
                                        r"model expects 20-d"):
        check_feature_dims(word_aligned, FeatureDims(audio=5, vision=20))
    check_feature_dims(word_aligned, {"audio": 5, "vision": 47}, ["text", "vision"])
    with pytest.raises(DataError, match="it has no audio but the model expects 74-d audio"):
        check_feature_dims(load_dataset(mosi_label_dir), {"audio": 74, "vision": 0})


def test_nan_refused_with_error_policy(word_aligned, tmp_path):
    content = build_mmsa(word_aligned)
    content["valid"]["vision"][1, 2, 3] = np.nan
    path = write(tmp_path, content)
    clip = content["valid"]["id"][1]
    with pytest.raises(DataError, match=rf"\[valid\] field 'vision': clip '{re.escape(clip)}' "
                                        r"\(row 1\) has 1 non-finite value\(s\), first nan at "
                                        r"step 2, dim 3"):
        load_dataset(path, nonfinite="error")
    assert load_dataset(path).replaced_nonfinite == {"valid/vision": 1}


def test_empty_transcript(word_aligned, tmp_path):
    content = build_mmsa(word_aligned)
    content["train"]["raw_text"][4] = "   "
    clip = content["train"]["id"][4]
    with pytest.raises(DataError, match=rf"\[train\]: empty transcript for clip "
                                        rf"'{re.escape(clip)}' \(row 4\)"):
        load_dataset(write(tmp_path, content))


def test_label_out_of_range(word_aligned, tmp_path):
    content = build_mmsa(word_aligned)
    content["test"]["regression_labels"][0] = 3.5
    with pytest.raises(DataError, match=r"\[test\]: label of clip .* is 3\.5, outside \[-3, 3\] "
                                        r"of dataset 'mosi'"):
        load_dataset(write(tmp_path, content), dataset="mosi")


def test_bad_clip_id(word_aligned, tmp_path):
    content = build_mmsa(word_aligned)
    content["train"]["id"][0] = "no-separator"
    with pytest.raises(DataError, match=r"id of row 0 is 'no-separator', expected "
                                        r"'video\$_\$clip'"):
        load_dataset(write(tmp_path, content))


def test_cmu_sdk_mismatched_entry(mosi_word_aligned, tmp_path):
    entries = safe_load(mosi_word_aligned)
    (word_ids, facet, covarep, words), label, segment = entries[5]
    entries[5] = ((word_ids, facet[:-1], covarep, words), label, segment)
    with pytest.raises(DataError, match=rf"\[all\]: entry 5 \({segment.replace('[', '.')}.*"
                                        r"mismatched lengths"):
        load_dataset(write(tmp_path, entries))
    entries[5] = ((word_ids, facet, covarep, words), label)
    with pytest.raises(DataError, match=r"entry 5 is not \(\(word_ids"):
        load_dataset(write(tmp_path, entries))


def test_cmu_sdk_nonfinite(mosi_word_aligned, tmp_path):
    entries = safe_load(mosi_word_aligned)
    (word_ids, facet, covarep, words), label, segment = entries[0]
    covarep = covarep.copy()
    covarep[0, :2] = [np.inf, -np.inf]
    entries[0] = ((word_ids, facet, covarep, words), label, segment)
    data = load_dataset(write(tmp_path, entries))
    assert data.replaced_nonfinite == {"all/audio": 2}
    assert (data.splits["all"].audio[0][0, :2] == 0).all()
    with pytest.raises(DataError, match=r"covarep \(audio\): clip 'WKA5OygbEKI\$_\$1'"):
        load_dataset(write(tmp_path, entries), nonfinite="error")


def test_unreadable_label_csv_row(mosi_label_dir, tmp_path):
    lines = (mosi_label_dir / "label.csv").read_text().splitlines()
    folder = tmp_path / "mosi"
    folder.mkdir()
    bad = list(lines)
    bad[3] = bad[3] + ",extra,fields"
    (folder / "label.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(DataError, match=r"label\.csv: line 4: 7 fields for 5 columns"):
        load_dataset(folder)
    bad = list(lines)
    bad[5] = bad[5].replace(",train", "").rsplit(",", 1)[0] + ",positive,train"
    (folder / "label.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(DataError, match=r"label\.csv: line 6: column 'label' is 'positive', "
                                        r"expected a finite number"):
        load_dataset(folder)
    bad = list(lines)
    video, clip, _text, label, mode = bad[2].split(",")[0], bad[2].split(",")[1], "", \
        bad[2].split(",")[-2], bad[2].split(",")[-1]
    bad[2] = f"{video},{clip},,{label},{mode}"
    (folder / "label.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(DataError, match=r"empty transcript for clip .* \(line 3\)"):
        load_dataset(folder)
    (folder / "label.csv").write_text("video_id,clip_id,text,mode\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['label'\]"):
        load_dataset(folder)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "nothing.pkl")
    with pytest.raises(DataError, match="cannot tell the format: the pickle holds a int"):
        load_dataset(write(tmp_path, 3))
    with pytest.raises(DataError, match="no label.csv in this folder"):
        load_dataset(tmp_path)


def test_bytes_transcripts_and_bad_text_bert(word_aligned, tmp_path):
    content = build_mmsa(word_aligned)
    content["valid"]["raw_text"] = np.array([t.encode() for t in content["valid"]["raw_text"]],
                                            dtype=object)
    data = load_dataset(write(tmp_path, content))
    assert data.splits["valid"].texts[0] == str(content["valid"]["raw_text"][0].decode())
    content = build_mmsa(word_aligned, aligned=True)
    content["train"]["text_bert"] = content["train"]["text_bert"][:, :2]
    with pytest.raises(DataError, match=r"\[train\]: field 'text_bert' has shape \(\d+, 2, 50\), "
                                        r"expected \(\d+, 3, L\)"):
        load_dataset(write(tmp_path, content))


def test_inspect_reports_replaced_values(word_aligned, tmp_path):
    from click.testing import CliRunner

    from msakit.cli import main

    content = build_mmsa(word_aligned)
    content["test"]["audio"][0, 0, :4] = -np.inf
    path = write(tmp_path, content)
    result = CliRunner().invoke(main, ["data", "inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "test/audio 4" in result.output
    refused = CliRunner().invoke(main, ["data", "inspect", str(path), "--nonfinite", "error"])
    assert refused.exit_code == 1 and "non-finite" in refused.output
