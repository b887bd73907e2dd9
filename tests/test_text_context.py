"""Text context (``model.text_context``): a clip read with its video's neighbouring utterances.

Real MOSI transcripts (label.csv, the packaged 229-clip set) and the packaged MiniLM."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from msakit.cli import main
from msakit.config import build_config
from msakit.data import load_dataset, make_loader
from msakit.data.collate import SplitDataset, collate
from msakit.data.context import TextContext, context_report, find_neighbours
from msakit.data.dataset import Split
from msakit.lm import load_tokenizer
from msakit.lm_cache import LanguageModelCache, token_key
from msakit.modules.text import PretrainedTextEncoder
from msakit.training.loading import text_context_record

LM = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(LM)


@pytest.fixture(scope="module")
def encoder():
    return PretrainedTextEncoder(LM, pooling="mean", freeze=True).eval()


@pytest.fixture(scope="module")
def mosi_valid(mosi_label_dir) -> Split:
    return load_dataset(mosi_label_dir).split("valid")


def _split(videos_and_positions, texts, labels=None) -> Split:
    videos = [v for v, _ in videos_and_positions]
    positions = [p for _, p in videos_and_positions]
    return Split(ids=[f"{v}$_${p}" for v, p in videos_and_positions], video_ids=videos,
                 texts=list(texts), labels=np.asarray(labels if labels is not None
                                                      else np.zeros(len(texts)), np.float32),
                 positions=positions)


def test_shorthand_and_typed_config():
    assert TextContext.parse("both:2") == TextContext("both", 2)
    assert TextContext.parse("prev") == TextContext("previous", 1)
    assert not TextContext.parse("none").enabled
    config = build_config("lf_dnn", ["model.text_context=next:3"])
    assert (config.model.text_context.mode, config.model.text_context.k) == ("next", 3)
    config = build_config("lrcmt", ["model.text_context.mode=previous"])
    assert str(config.model.text_context) == "previous:1"
    with pytest.raises(Exception, match="none, previous:K, next:K or both:K"):
        build_config("lf_dnn", ["model.text_context=around:2"])


def test_readers_keep_positions(mosi_label_dir):
    dataset = load_dataset(mosi_label_dir)
    train = dataset.split("train")
    row = train.ids.index("03bSnISJMiM$_$3")
    assert train.positions[row] == 3
    demo = load_dataset("mosi-demo").split("all")
    assert all(int(i.rpartition("$_$")[2]) == p for i, p in zip(demo.ids, demo.positions))
    sub = demo.subset([5, 2])
    assert sub.positions == [demo.positions[5], demo.positions[2]]


def test_neighbours_come_from_the_same_video_in_reading_order(mosi_valid):
    found = find_neighbours(mosi_valid, TextContext("both", 2))
    for row in range(len(mosi_valid)):
        video, here = mosi_valid.video_ids[row], mosi_valid.positions[row]
        for r in found.previous[row] + found.next[row]:
            assert mosi_valid.video_ids[r] == video and r != row
        assert [mosi_valid.positions[r] for r in found.previous[row]] == sorted(
            p for v, p in zip(mosi_valid.video_ids, mosi_valid.positions)
            if v == video and here - 2 <= p < here)
    # the 229 validation clips have every neighbour: only video edges have fewer
    report = context_report(mosi_valid, TextContext("both", 1))
    assert report["clips_with_missing_neighbours"] == 0
    assert report["clips_with_all_neighbours"] + report["clips_at_video_edge"] == 229


def test_context_tokens_never_carry_labels(mosi_valid, tokenizer):
    """A clip's tokens depend on its and its neighbours' transcripts, never on any label."""
    context = TextContext("both", 1)
    items = SplitDataset(mosi_valid, tokenizer, 128, text_context=context)
    relabelled = mosi_valid.subset(range(len(mosi_valid)))
    relabelled.labels = -mosi_valid.labels[::-1].copy() + 0.5
    other = SplitDataset(relabelled, tokenizer, 128, text_context=context)
    for row in range(0, len(mosi_valid), 7):
        assert np.array_equal(items[row]["input_ids"], other[row]["input_ids"])
        assert np.array_equal(items[row]["token_type_ids"], other[row]["token_type_ids"])
        assert items[row]["label"] == pytest.approx(float(mosi_valid.labels[row]))
    # ... and do change with a neighbour's transcript
    row = find_neighbours(mosi_valid, context).previous.index(
        next(p for p in find_neighbours(mosi_valid, context).previous if p))
    neighbour = find_neighbours(mosi_valid, context).previous[row][0]
    edited = mosi_valid.subset(range(len(mosi_valid)))
    edited.texts[neighbour] = "absolutely dreadful"
    changed = SplitDataset(edited, tokenizer, 128, text_context=context)[row]
    assert not np.array_equal(changed["input_ids"], items[row]["input_ids"])
    assert changed["text_own_length"] == items[row]["text_own_length"]


def test_sequence_layout_and_budget(tokenizer):
    split = _split([("v", 1), ("v", 2), ("v", 3)],
                   ["i saw it yesterday", "it was good", "but the end was bad"])
    item = SplitDataset(split, tokenizer, 64, text_context="both:1")[1]
    own = tokenizer("it was good")["input_ids"]
    assert item["text_own_length"] == len(own)
    assert list(item["input_ids"][:len(own)]) == own  # the clip first, at its usual positions
    assert tokenizer.decode(item["input_ids"][len(own):]) == \
        "i saw it yesterday [SEP] but the end was bad [SEP]"
    assert set(item["token_type_ids"][:len(own)]) == {0}
    assert set(item["token_type_ids"][len(own):]) == {1}
    # a tight budget keeps the clip whole and the nearest context tokens
    tight = SplitDataset(split, tokenizer, len(own) + 5, text_context="both:1")[1]
    assert len(tight["input_ids"]) == len(own) + 5
    assert list(tight["input_ids"][:len(own)]) == own
    # room for 3 context tokens: the previous side gets the odd one
    assert tokenizer.decode(tight["input_ids"][len(own):]) == "it yesterday [SEP] but [SEP]"


def test_own_mask_pooling_equals_utterance_only_when_context_is_empty(tokenizer, encoder):
    split = _split([("lone", 1), ("v", 1), ("v", 2)],
                   ["that was the best film of the year", "i hated the start", "it got better"])
    plain = next(iter(make_loader(split, tokenizer, batch_size=3, max_text_tokens=64)))
    with_context = next(iter(make_loader(split, tokenizer, batch_size=3, max_text_tokens=64,
                                         text_context="both:1")))
    assert torch.equal(with_context["lm_attention_mask"].sum(1)[0],
                       with_context["attention_mask"].sum(1)[0])  # the lone clip: no context
    assert torch.equal(with_context["attention_mask"].sum(1), plain["attention_mask"].sum(1))
    with torch.no_grad():
        pooled_plain = encoder.encode_batch(plain)
        pooled_context = encoder.encode_batch(with_context)
        states = encoder.language_model_states(with_context["input_ids"],
                                               with_context["lm_attention_mask"],
                                               with_context["token_type_ids"])
    scale = pooled_plain.abs().max()
    torch.testing.assert_close(pooled_context[0], pooled_plain[0], rtol=0, atol=1e-5 * scale)
    # the others read their neighbour: other states, pooled over their own tokens only
    assert (pooled_context[1:] - pooled_plain[1:]).abs().max() > 1e-2 * scale
    own = with_context["attention_mask"][1].bool()
    torch.testing.assert_close(pooled_context[1], states[1, own].mean(0), rtol=0,
                               atol=1e-5 * scale)


def test_cache_key_differs_with_context_and_cached_states_match(tokenizer, encoder, tmp_path,
                                                                mosi_valid):
    split = mosi_valid.subset(range(6))
    plain = SplitDataset(split, tokenizer, 128)
    both = SplitDataset(split, tokenizer, 128, text_context="both:1")
    previous = SplitDataset(split, tokenizer, 128, text_context="previous:1")
    assert len({plain.cache_key, both.cache_key, previous.cache_key}) == 3
    keys = [{token_key(d[i]["input_ids"], d[i]["token_type_ids"]) for i in range(6)}
            for d in (plain, both, previous)]
    assert not keys[0] & keys[1]  # every one of these clips has a neighbour
    # a video's first clip has no previous utterance: the same tokens, rightly the same entry
    first = token_key(plain[0]["input_ids"], plain[0]["token_type_ids"])
    assert split.positions[0] == 1 and keys[0] & keys[2] == {first}
    # the cached path (states of the whole sequence, pooled over the own tokens) is the
    # uncached one
    cache = LanguageModelCache(encoder, tokenizer, 128, root=tmp_path)
    items = [both[i] for i in range(6)]
    hidden, statistics = cache.states([(it["input_ids"], it["token_type_ids"]) for it in items])
    assert statistics.computed == 6
    batch = collate(items, both.pad_token_id)
    with torch.no_grad():
        direct = encoder.encode_batch(batch)
        cached = encoder.encode_batch({**batch, "text_hidden": hidden[:, :batch["input_ids"].shape[1]]})
    torch.testing.assert_close(cached, direct, rtol=0, atol=1e-4 * direct.abs().max())


def test_packed_and_collated_batches_agree(mosi_valid, tokenizer):
    dataset = SplitDataset(mosi_valid, tokenizer, 128, text_context="previous:2")
    rows = [3, 0, 17, 40]
    packed = next(iter(make_loader(dataset, batch_size=4, sampler=rows)))
    collated = collate([dataset[i] for i in rows], dataset.pad_token_id)
    for key in ("input_ids", "attention_mask", "lm_attention_mask", "token_type_ids"):
        assert torch.equal(packed[key], collated[key]), key
    assert (packed["attention_mask"] <= packed["lm_attention_mask"]).all()


def test_word_aligned_context_gets_zero_feature_rows(tokenizer):
    demo = load_dataset("mosi-demo")
    split = demo.split("all").subset(range(8))
    item = SplitDataset(split, tokenizer, 96, word_aligned=True, text_context="both:1")[3]
    plain = SplitDataset(split, tokenizer, 96, word_aligned=True)[3]
    own = item["text_own_length"]
    assert item["audio"].shape[0] == len(item["input_ids"]) > own
    np.testing.assert_array_equal(item["audio"][:own], plain["audio"])
    assert not item["audio"][own:].any() and not item["vision"][own:].any()


def test_missing_neighbours_fall_back_and_are_reported(tokenizer):
    # clip 3 of video a is missing from the data; video b is complete
    split = _split([("a", 1), ("a", 2), ("a", 4), ("a", 5), ("b", 1), ("b", 2)],
                   ["one", "two", "four", "five", "b one", "b two"])
    found = find_neighbours(split, TextContext("both", 1))
    assert found.previous[2] == [1] and found.next[1] == [2]  # the nearest existing clips
    assert found.gaps == [1, 2]
    report = context_report(split, TextContext("both", 1))
    assert report["clips_with_missing_neighbours"] == 2
    assert report["missing_neighbour_examples"] == ["a$_$2", "a$_$4"]
    assert report["clips_at_video_edge"] == 4
    item = SplitDataset(split, tokenizer, 64, text_context="both:1")[2]
    assert tokenizer.decode(item["input_ids"]) == "[CLS] four [SEP] two [SEP] five [SEP]"
    # what a run writes into data.json
    from msakit.data.folds import Fold

    config = build_config("lf_dnn", ["model.text_context=both:1"])
    record = text_context_record([Fold("standard", split, split, split)], config)
    assert record["text_context"]["standard"]["test"]["clips_with_missing_neighbours"] == 2
    assert text_context_record([Fold("standard", split, split, split)],
                               build_config("lf_dnn", [])) == {}


# --------------------------------------------------------------------------------------------
# Prediction with context
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def context_model():
    """The shipped text model set to read one utterance on each side (its weights fit any
    token sequence): the mechanism, not a trained context model."""
    from msakit.config_schema import TextContextConfig
    from msakit.pretrained import from_pretrained

    model = from_pretrained()
    model.config.model.text_context = TextContextConfig(mode="both", k=1)
    model.config.data.max_text_tokens = 128
    return model


def _write_table(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "clip_id", "text", "label"])
        writer.writerows(rows)


def test_predict_texts_keeps_order_and_groups_by_video(context_model, tmp_path):
    from msakit.predict import Utterance, predict_utterances

    rows = [("a", "1", "i went to see it last night", "9"),
            ("b", "7", "the acting was terrible", "9"),
            ("a", "2", "and honestly it was wonderful", "9"),
            ("b", "8", "i want my money back", "9"),
            ("a", "3", "go and see it", "9"),
            ("c", "1", "meh", "9")]
    table = tmp_path / "texts.csv"
    _write_table(table, rows)
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(main, ["predict", "--texts", str(table), "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with out.open() as handle:
        written = list(csv.DictReader(handle))
    assert [(r["video_id"], r["clip_id"]) for r in written] == [(v, c) for v, c, _, _ in rows]
    from msakit.pretrained import from_pretrained

    shipped = str(from_pretrained().config.model.text_context)  # the shipped model's context
    assert {r["context"] for r in written} == {shipped}
    again = CliRunner().invoke(main, ["predict", "--texts", str(table), "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output  # never overwritten

    # a model that reads context: each clip with its own video's neighbours, in table order
    results = predict_utterances([Utterance(v, c, t) for v, c, t, _ in rows], context_model)
    assert [(r.info["video_id"], r.info["clip_id"]) for r in results] == \
        [(v, c) for v, c, _, _ in rows]
    assert [(r.info["context"]["previous"], r.info["context"]["next"]) for r in results] == \
        [(0, 1), (0, 1), (1, 1), (1, 0), (1, 0), (0, 0)]
    alone = predict_utterances([Utterance("a", c, t) for v, c, t, _ in rows if v == "a"],
                               context_model)
    assert [r.score for r in alone] == pytest.approx(
        [r.score for r in results if r.info["video_id"] == "a"], rel=1e-4, abs=1e-5)
    # the neighbours change the score; a lone utterance is scored alone and says so
    isolated = predict_utterances(["and honestly it was wonderful"], context_model)[0]
    assert abs(isolated.score - alone[1].score) > 1e-3
    assert isolated.info["context"] == {"mode": "both:1", "previous": 0, "next": 0}
    assert any("without context" in w for w in isolated.warnings)
    assert any("without context" in w for w in results[-1].warnings)


def test_predict_texts_bad_table(tmp_path):
    table = tmp_path / "texts.csv"
    _write_table(table, [("a", "1", "fine", "0"), ("a", "1", "again", "0")])
    result = CliRunner().invoke(main, ["predict", "--texts", str(table)])
    assert result.exit_code == 1 and "line 3" in result.output and "appears twice" in result.output
