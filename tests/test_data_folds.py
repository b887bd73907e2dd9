"""Grouped cross-validation folds and experiment partitions; the inspect command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from msakit.data import DataError, dataset_splits, grouped_folds, load_dataset


@pytest.fixture(scope="module")
def word_aligned(mosi_word_aligned):
    return load_dataset(mosi_word_aligned)


@pytest.mark.parametrize("k", [2, 5])
def test_folds_grouped_by_video(word_aligned, k):
    split = word_aligned.splits["all"]
    folds = grouped_folds(split, k, valid_fraction=0.2, seed=0)
    assert [f.name for f in folds] == [f"fold{i}" for i in range(k)]
    test_ids = []
    for fold in folds:
        parts = [set(fold.train.video_ids), set(fold.valid.video_ids), set(fold.test.video_ids)]
        assert all(parts)
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
        assert len(fold.train) + len(fold.valid) + len(fold.test) == len(split)
        assert set(fold.train.ids) | set(fold.valid.ids) | set(fold.test.ids) == set(split.ids)
        test_ids += fold.test.ids
    assert sorted(test_ids) == sorted(split.ids)  # every clip tested exactly once


def test_folds_seeded(word_aligned):
    split = word_aligned.splits["all"]

    def assignment(seed):
        return [sorted(set(f.test.video_ids)) for f in grouped_folds(split, 5, 0.2, seed)]

    assert assignment(1) == assignment(1)
    assert any(assignment(s) != assignment(1) for s in (2, 3, 4))


def test_dataset_splits(word_aligned, mosi_label_dir):
    with pytest.raises(DataError, match=r"holds split\(s\) \['all'\].*pass --folds K"):
        dataset_splits(word_aligned)
    assert len(dataset_splits(word_aligned, folds=5)) == 5
    csv = load_dataset(mosi_label_dir)
    (standard,) = dataset_splits(csv)
    assert standard.name == "standard"
    name, train, valid, test = standard
    assert name == "standard" and train is csv.splits["train"] and test is csv.splits["test"]
    assert (len(standard.train), len(standard.valid), len(standard.test)) == (1281, 229, 685)
    folds = dataset_splits(csv, folds=3, seed=0)
    assert sum(len(f.test) for f in folds) == 2195
    for fold in folds:
        assert not set(fold.train.video_ids) & set(fold.test.video_ids)
    with pytest.raises(DataError, match="need at least 11 videos"):
        dataset_splits(word_aligned, folds=10)


def test_inspect_command(mosi_word_aligned, tmp_path):
    from msakit.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["data", "inspect", str(mosi_word_aligned), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    info = summary["splits"]["all"]
    assert (info["clips"], info["videos"]) == (229, 10)
    assert summary["feature_dims"] == {"audio": 74, "vision": 47}
    assert info["lengths"]["audio"] == {"min": 2, "median": 9, "max": 44}
    assert info["labels"]["min"] == -3 and info["labels"]["max"] == 3
    assert info["labels"]["positive"] + info["labels"]["negative"] + info["labels"]["zero"] \
        == pytest.approx(1)
    table = runner.invoke(main, ["data", "inspect", str(mosi_word_aligned)])
    assert table.exit_code == 0 and "229" in table.output and "word-aligned" in table.output

    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    result = runner.invoke(main, ["data", "inspect", str(bad)])
    assert result.exit_code == 1
    assert "refused to unpickle the global os.system" in result.output
