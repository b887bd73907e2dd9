"""Tokenisation, word-aligned expansion, collate and loaders, on the real MOSI clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msakit.data import load_dataset, make_loader
from msakit.data.collate import SplitDataset, collate
from msakit.data.text import expand_to_tokens, tokenize_words
from msakit.lm import load_tokenizer

BATCH_KEYS = {"index", "input_ids", "attention_mask", "token_type_ids", "audio", "audio_lengths",
              "audio_mask", "vision", "vision_lengths", "vision_mask", "labels", "ids",
              "host_lengths"}
WORD_KEYS = {"word_audio", "word_vision", "word_lengths", "word_mask"}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def aligned_split(mosi_word_aligned):
    return load_dataset(mosi_word_aligned).splits["all"]


@pytest.fixture(scope="module")
def text_split(mosi_label_dir):
    return load_dataset(mosi_label_dir).splits["valid"]


def test_word_aligned_expansion_keeps_alignment(aligned_split, tokenizer):
    special = set(tokenizer.all_special_ids)
    split_words = 0
    for i in range(len(aligned_split)):
        words = aligned_split.words[i]
        tokens = tokenize_words(tokenizer, words, max_text_tokens=512)
        audio = expand_to_tokens(aligned_split.audio[i], tokens.word_index)
        vision = expand_to_tokens(aligned_split.vision[i], tokens.word_index)
        assert audio.shape == (len(tokens), 74) and vision.shape == (len(tokens), 47)
        for j, (token, word) in enumerate(zip(tokens.input_ids, tokens.word_index)):
            if word < 0:
                assert token in special
                assert not audio[j].any() and not vision[j].any()
            else:
                np.testing.assert_array_equal(audio[j], aligned_split.audio[i][word])
                np.testing.assert_array_equal(vision[j], aligned_split.vision[i][word])
        # every word is covered, in order, by the sub-words that spell it
        for w, word in enumerate(words):
            pieces = tokenizer.convert_ids_to_tokens(tokens.input_ids[tokens.word_index == w])
            assert "".join(p.removeprefix("##") for p in pieces) == word.lower()
            split_words += len(pieces) > 1
    assert split_words > 0  # the data does exercise sub-word expansion


def test_word_aligned_truncation(aligned_split, tokenizer):
    longest = int(np.argmax([len(w) for w in aligned_split.words]))
    dataset = SplitDataset(aligned_split, tokenizer, max_text_tokens=10, word_aligned=True)
    item = dataset[longest]
    assert len(item["input_ids"]) == 10
    assert item["input_ids"][-1] == tokenizer.sep_token_id
    assert item["audio"].shape == (10, 74)
    full = tokenize_words(tokenizer, aligned_split.words[longest], 512)
    kept = full.word_index[1:9]  # the first 8 sub-words survive, then [SEP]
    np.testing.assert_array_equal(item["audio"][1:9], aligned_split.audio[longest][kept])
    assert not item["audio"][0].any() and not item["audio"][9].any()


def test_collate_word_aligned(aligned_split, tokenizer):
    dataset = SplitDataset(aligned_split, tokenizer, max_text_tokens=64, word_aligned=True)
    rows = [0, 5, 17, 100]
    batch = collate([dataset[i] for i in rows], pad_token_id=tokenizer.pad_token_id)
    assert set(batch) == BATCH_KEYS | WORD_KEYS
    lengths = batch["attention_mask"].sum(1)
    length = batch["input_ids"].shape[1]
    assert batch["audio"].shape == (4, length, 74) and batch["vision"].shape == (4, length, 47)
    assert torch.equal(batch["audio_lengths"], lengths)
    assert torch.equal(batch["vision_lengths"], lengths)
    assert torch.equal(batch["audio_mask"], batch["attention_mask"].bool())
    assert batch["audio_mask"].dtype == torch.bool
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == pytest.approx(aligned_split.labels[rows].tolist())
    assert batch["index"].tolist() == rows
    assert batch["ids"] == [aligned_split.ids[i] for i in rows]
    assert (batch["input_ids"][~batch["attention_mask"].bool()] == tokenizer.pad_token_id).all()
    assert not batch["audio"][~batch["audio_mask"]].any()
    # one step per word for recurrent encoders: every word, unexpanded, and CPU lengths
    words = torch.tensor([len(aligned_split.words[i]) for i in rows])
    assert torch.equal(batch["word_lengths"], words)
    assert torch.equal(batch["host_lengths"]["word"], words)
    assert batch["word_audio"].shape == (4, int(words.max()), 74)
    for b, i in enumerate(rows):
        assert torch.equal(batch["word_audio"][b, : words[b]],
                           torch.from_numpy(aligned_split.audio[i]))
        assert torch.equal(batch["word_vision"][b, : words[b]],
                           torch.from_numpy(aligned_split.vision[i]))
    assert not batch["word_audio"][~batch["word_mask"]].any()
    # host lengths stay on the CPU when the batch moves to a device
    from msakit.training.trainer import move_batch
    moved = move_batch(batch, torch.device("meta"))
    assert moved["audio"].device.type == "meta"
    assert moved["host_lengths"]["word"].device.type == "cpu"


def test_recurrent_input_reads_word_steps_when_present(aligned_split, tokenizer):
    from msakit.modules.encoders import recurrent_input
    aligned = next(iter(make_loader(aligned_split.subset([0, 5]), tokenizer, 2,
                                    word_aligned=True)))
    sequence = recurrent_input(aligned, "vision")
    assert sequence.x is aligned["word_vision"]
    assert torch.equal(sequence.lengths, aligned["word_lengths"])
    assert sequence.host_lengths is aligned["host_lengths"]["word"]
    unaligned = next(iter(make_loader(aligned_split.subset([0, 5]), tokenizer, 2)))
    sequence = recurrent_input(unaligned, "vision")
    assert sequence.x is unaligned["vision"]
    assert sequence.host_lengths is unaligned["host_lengths"]["vision"]


def test_collate_unaligned_and_absent_modalities(aligned_split, text_split, tokenizer):
    # unaligned: audio/vision at their own length, text tokenised from the transcript
    dataset = SplitDataset(aligned_split, tokenizer, max_text_tokens=64, word_aligned=False)
    rows = [3, 8, 40]
    batch = collate([dataset[i] for i in rows])
    true = torch.tensor([aligned_split.audio[i].shape[0] for i in rows])
    assert torch.equal(batch["audio_lengths"], true)
    assert batch["audio"].shape == (3, int(true.max()), 74)
    assert torch.equal(batch["audio_mask"].sum(1), true)
    for b, i in enumerate(rows):
        assert torch.equal(batch["audio"][b, : true[b]], torch.from_numpy(aligned_split.audio[i]))
    # text-only data: absent modalities are (B, 1, 0) with length 1
    text_batch = next(iter(make_loader(text_split, tokenizer, batch_size=5)))
    for modality in ("audio", "vision"):
        assert text_batch[modality].shape == (5, 1, 0)
        assert text_batch[f"{modality}_lengths"].tolist() == [1] * 5
        mask = text_batch[f"{modality}_mask"]
        assert mask.shape == (5, 1) and mask.all()
    assert text_batch["input_ids"][0, 0] == tokenizer.cls_token_id
    # modalities excluded by config
    no_audio = next(iter(make_loader(aligned_split, tokenizer, 4, modalities=("text", "vision"),
                                     word_aligned=True)))
    assert no_audio["audio"].shape == (4, 1, 0) and no_audio["vision"].shape[2] == 47
    no_text = next(iter(make_loader(aligned_split, tokenizer, 4, modalities=("audio", "vision"),
                                    word_aligned=True)))
    assert no_text["input_ids"].shape == (4, 2)  # [CLS] [SEP]
    # without text, word-aligned audio keeps one step per word
    words = torch.tensor([len(aligned_split.words[i]) for i in no_text["index"].tolist()])
    assert torch.equal(no_text["audio_lengths"], words)
    assert no_text["audio"].shape == (4, int(words.max()), 74)


def test_unimodal_labels_and_zero_length_clip(aligned_split, tokenizer):
    split = aligned_split.subset(range(6))
    split.extra_labels = {"T": np.linspace(-1, 1, 6, dtype=np.float32)}
    split.audio[2] = np.zeros((0, 74), dtype=np.float32)
    batch = next(iter(make_loader(split, tokenizer, batch_size=6)))
    assert batch["labels_T"].dtype == torch.float32
    assert batch["labels_T"].tolist() == pytest.approx(np.linspace(-1, 1, 6).tolist())
    assert batch["audio_lengths"][2] == 1 and not batch["audio"][2].any()


def test_loader_deterministic_per_seed(aligned_split, tokenizer):
    def order(seed, epochs=2):
        loader = make_loader(aligned_split, tokenizer, batch_size=16, shuffle=True, seed=seed,
                             word_aligned=True)
        return [[i for batch in loader for i in batch["ids"]] for _ in range(epochs)]

    first, again, other = order(3), order(3), order(4)
    assert first == again
    assert first != other
    assert first[0] != first[1]  # reshuffled each epoch
    assert sorted(first[0]) == sorted(aligned_split.ids)


def test_tokenisation_cached(aligned_split, tokenizer):
    dataset = SplitDataset(aligned_split, tokenizer, word_aligned=True)
    assert dataset[7] is dataset[7]
    loader = make_loader(dataset, batch_size=64)
    for _ in range(2):
        for _batch in loader:
            pass
    assert len(dataset._cache) == len(aligned_split)
    # a loader rebuilt (as the trainer does each epoch) reuses the split's cache
    rebuilt = SplitDataset(aligned_split, tokenizer, word_aligned=True)
    assert rebuilt[7] is dataset[7]
    other_budget = SplitDataset(aligned_split, tokenizer, max_text_tokens=8, word_aligned=True)
    assert len(other_budget[7]["input_ids"]) <= 8


def test_transform_hook(aligned_split, tokenizer):
    seen = []

    def drop_last_word(item, rng):
        seen.append(float(rng.random()))
        keep = len(item["words"]) - 1
        return {"text": " ".join(item["words"][:keep]), "words": item["words"][:keep],
                "audio": item["audio"][:keep], "vision": item["vision"][:keep]}

    def run():
        seen.clear()
        loader = make_loader(aligned_split.subset(range(8)), tokenizer, 4, shuffle=True, seed=9,
                             word_aligned=True, transform=drop_last_word)
        batches = [b for b in loader]
        return batches, list(seen)

    batches, draws = run()
    _, draws_again = run()
    assert draws == draws_again and len(draws) == 8
    plain = SplitDataset(aligned_split, tokenizer, word_aligned=True)
    for batch in batches:
        for b, index in enumerate(batch["index"].tolist()):
            n_tokens = int(batch["attention_mask"][b].sum())
            full = tokenize_words(tokenizer, aligned_split.words[index][:-1], 64)
            assert n_tokens == len(full) < len(plain[index]["input_ids"])


@pytest.mark.parametrize("word_aligned,modalities", [
    (True, ("text", "audio", "vision")), (False, ("text", "audio", "vision")),
    (True, ("text", "vision")), (True, ("audio", "vision")),
])
def test_packed_batches_equal_per_clip_collate(aligned_split, tokenizer, word_aligned, modalities):
    """Batches gathered from the packed split are the per-clip collate's, key for key."""
    from msakit.data.collate import PackedSplit

    split = aligned_split.subset(range(40))
    split.extra_labels = {"T": np.linspace(-1, 1, 40, dtype=np.float32)}
    if not word_aligned:
        split.audio[5] = np.zeros((0, 74), dtype=np.float32)  # a clip with no audio rows
    dataset = SplitDataset(split, tokenizer, max_text_tokens=24, word_aligned=word_aligned,
                           modalities=modalities)
    packed = PackedSplit.from_dataset(dataset)
    for rows in ([5, 0, 39, 17, 3], [12], list(range(40))[::-1]):
        expected = collate([dataset[i] for i in rows], pad_token_id=tokenizer.pad_token_id)
        got = packed.batch(rows)
        assert set(got) == set(expected)
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert got[key].dtype == value.dtype, key
                assert torch.equal(got[key], value), key
            elif isinstance(value, dict):  # host_lengths
                assert set(got[key]) == set(value), key
                assert all(torch.equal(got[key][k], v) for k, v in value.items()), key
            else:
                assert got[key] == value, key
