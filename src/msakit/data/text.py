"""Tokenisation for the language model, and sub-word expansion of word-aligned features.

Word-aligned data (CMU-SDK pickles) has one acoustic/visual step per transcript word. A language
model splits words into sub-word tokens and adds special tokens, so each step is repeated for every
sub-word of its word, and special tokens ([CLS], [SEP], ...) get zero rows; audio, vision and text
then have the same length ``L_t``. Truncation to ``max_text_tokens`` drops the last sub-words and,
with them, the rows of the words they came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msakit.data.dataset import DataError


@dataclass(frozen=True)
class TokenizedText:
    """One clip's tokens.

    Attributes:
        input_ids: ``(L_t,)`` int64 token ids including special tokens.
        token_type_ids: ``(L_t,)`` int64 segment ids (zeros for one sentence).
        word_index: ``(L_t,)`` int64: for word-aligned input, the word each token belongs to, or
            -1 for special tokens (and context tokens); ``None`` for plain text.
        own_length: with text context (:func:`add_context`), the number of leading tokens that
            are the clip's own (its special tokens included); ``None`` without context.
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    word_index: np.ndarray | None = None
    own_length: int | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def _as_arrays(encoding) -> tuple[np.ndarray, np.ndarray]:
    input_ids = np.asarray(encoding["input_ids"], dtype=np.int64)
    token_types = encoding.get("token_type_ids")
    token_type_ids = (np.zeros_like(input_ids) if token_types is None
                      else np.asarray(token_types, dtype=np.int64))
    return input_ids, token_type_ids


def tokenize_text(tokenizer, text: str, max_text_tokens: int) -> TokenizedText:
    """Tokenise a transcript, truncated to ``max_text_tokens`` tokens including special ones."""
    encoding = tokenizer(text, truncation=True, max_length=max_text_tokens)
    input_ids, token_type_ids = _as_arrays(encoding)
    return TokenizedText(input_ids, token_type_ids)


def tokenize_words(tokenizer, words: list[str], max_text_tokens: int) -> TokenizedText:
    """Tokenise pre-split words, remembering which word each token came from.

    Needs a fast (Rust) tokenizer, whose ``word_ids()`` map tokens back to words.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            f"word-aligned data needs a fast tokenizer to map sub-words to words; "
            f"{type(tokenizer).__name__} is not one"
        )
    encoding = tokenizer(list(words), is_split_into_words=True, truncation=True,
                         max_length=max_text_tokens)
    input_ids, token_type_ids = _as_arrays(encoding)
    word_index = np.asarray(
        [-1 if w is None else w for w in encoding.word_ids()], dtype=np.int64
    )
    return TokenizedText(input_ids, token_type_ids, word_index)


def expand_to_tokens(features: np.ndarray, word_index: np.ndarray) -> np.ndarray:
    """Repeat each word's feature row for each of its sub-word tokens.

    Args:
        features: ``(L_words, D)`` one row per word.
        word_index: ``(L_t,)`` word of each token, -1 for special tokens.

    Returns:
        ``(L_t, D)`` float32: row ``j`` is ``features[word_index[j]]``, or zeros where
        ``word_index[j] == -1``.
    """
    if word_index.size and word_index.max(initial=-1) >= features.shape[0]:
        raise DataError(
            f"token refers to word {int(word_index.max())} but the clip has "
            f"{features.shape[0]} feature rows"
        )
    out = np.zeros((word_index.shape[0], features.shape[1]), dtype=np.float32)
    is_word = word_index >= 0
    out[is_word] = features[word_index[is_word]]
    return out


@dataclass(frozen=True)
class PairTemplate:
    """Where a tokenizer puts its special tokens around a second segment, relative to the
    encoding of the first segment alone (BERT: ``[CLS] a [SEP]`` + ``b [SEP]``; RoBERTa:
    ``<s> a </s>`` + ``</s> b </s>``).

    Attributes:
        between: ids after the single-segment encoding and before segment B (BERT: none).
        after: ids after segment B (BERT: ``[SEP]``).
        separator: id that parts the previous from the next utterances inside segment B.
        between_type, b_type, after_type: their token type ids.
    """

    between: tuple[int, ...]
    after: tuple[int, ...]
    separator: int | None
    between_type: int
    b_type: int
    after_type: int

    @classmethod
    def of(cls, tokenizer) -> PairTemplate:
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(f"text context needs a fast tokenizer (to find the segments of a "
                            f"pair); {type(tokenizer).__name__} is not one")
        single = tokenizer("a", add_special_tokens=True)["input_ids"]
        pair = tokenizer("a", "b")
        ids, types = _as_arrays(pair)
        segments = pair.sequence_ids()
        first_b = segments.index(1)
        last_b = len(segments) - 1 - segments[::-1].index(1)
        end_a = len(single)
        if list(ids[:end_a]) != list(single):
            raise DataError(f"{type(tokenizer).__name__}: its pair encoding does not start with "
                            "the single-segment encoding; text context cannot mark the clip's "
                            "own tokens")
        return cls(
            between=tuple(int(i) for i in ids[end_a:first_b]),
            after=tuple(int(i) for i in ids[last_b + 1:]),
            separator=getattr(tokenizer, "sep_token_id", None),
            between_type=int(types[first_b - 1]) if first_b > end_a else 0,
            b_type=int(types[first_b]),
            after_type=int(types[-1]) if last_b + 1 < len(ids) else 0,
        )


def _neighbour_ids(tokenizer, texts: list[str]) -> list[int]:
    if not texts:
        return []
    return list(tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"])


def add_context(tokens: TokenizedText, tokenizer, template: PairTemplate,
                previous: list[str], following: list[str], max_text_tokens: int
                ) -> TokenizedText:
    """The clip's tokens followed by its neighbours' as a second segment (see
    :mod:`msakit.data.context`), within ``max_text_tokens`` in all.

    Args:
        tokens: the clip alone, as :func:`tokenize_text` / :func:`tokenize_words` give it.
        previous, following: the neighbours' transcripts in reading order.

    Returns:
        The sequence with ``own_length = len(tokens)``; with no neighbours (or no room for
        them) the clip's tokens unchanged, ``own_length`` set.
    """
    own = len(tokens)
    room = max_text_tokens - own - len(template.between) - len(template.after)
    before = _neighbour_ids(tokenizer, previous)
    after = _neighbour_ids(tokenizer, following)
    separator = ([template.separator] if before and after and template.separator is not None
                 else [])
    room -= len(separator)
    if room <= 0 or not (before or after):
        return TokenizedText(tokens.input_ids, tokens.token_type_ids, tokens.word_index, own)
    if len(before) + len(after) > room:
        # each side gets half of the room; what one side leaves goes to the other
        keep_after = min(len(after), max(room // 2, room - len(before)))
        keep_before = min(len(before), room - keep_after)
        before = before[len(before) - keep_before:] if keep_before else []  # nearest tokens
        after = after[:keep_after]
        if not (before and after):
            separator = []
    segment_b = before + separator + after
    extra = list(template.between) + segment_b + list(template.after)
    types = ([template.between_type] * len(template.between) + [template.b_type] * len(segment_b)
             + [template.after_type] * len(template.after))
    word_index = None if tokens.word_index is None else np.concatenate(
        [tokens.word_index, np.full(len(extra), -1, dtype=np.int64)])
    return TokenizedText(
        np.concatenate([tokens.input_ids, np.asarray(extra, dtype=np.int64)]),
        np.concatenate([tokens.token_type_ids, np.asarray(types, dtype=np.int64)]),
        word_index, own)
