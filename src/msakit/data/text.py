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
            -1 for special tokens; ``None`` for plain text.
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    word_index: np.ndarray | None = None

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
