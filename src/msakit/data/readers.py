"""Readers for the three dataset formats msakit understands, all producing :class:`MSADataset`.

* **MMSA pickle** (``aligned_50.pkl`` / ``unaligned_50.pkl``, also what ``msakit extract``
  writes): a dict ``train``/``valid``/``test`` of per-split field dicts.
* **CMU-SDK word-aligned pickle** (as used by the MISA/MMIM code): a list of
  ``((word_ids, facet (L, D_v), covarep (L, D_a), words), [[label]], "video[k]")``. One split,
  ``"all"``; cross-validation folds divide it.
* **label.csv folder** (MMSA's ``label.csv``: ``video_id, clip_id, text, label, mode``): text only.

Every reader validates what it reads (see :mod:`msakit.data.validation`) and reports bad input as a
:class:`DataError` naming the file, split, field and the expected shape.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np

from msakit.data.context import clip_positions
from msakit.data.dataset import LABEL_RANGES, SPLIT_NAMES, DataError, MSADataset, Split
from msakit.data.safe_pickle import safe_load
from msakit.data.validation import (  # noqa: F401  (check_feature_dims re-exported)
    NonfinitePolicy,
    check_feature_dims,
    check_labels,
    check_texts,
    clean_features,
    split_clip_id,
)

Format = Literal["auto", "mmsa", "cmu_sdk", "label_csv"]
DatasetName = Literal["auto", "mosi", "mosei", "sims", "simsv2", "custom"]

#: (audio dim, vision dim) of the MMSA releases' features -> dataset family.
MMSA_FEATURE_DIMS: dict[tuple[int, int], str] = {
    (5, 20): "mosi",  # COVAREP subset / FACET subset in MMSA's MOSI release
    (74, 35): "mosei",
    (33, 709): "sims",
    (25, 177): "simsv2",
}
#: Vision (FACET) dim of CMU-SDK word-aligned pickles -> family (audio is COVAREP 74 for both).
CMU_SDK_VISION_DIMS: dict[int, str] = {47: "mosi", 35: "mosei"}

SIMS_UNIMODAL_KEYS = {"T": "regression_labels_T", "A": "regression_labels_A",
                      "V": "regression_labels_V"}
MMSA_REQUIRED_KEYS = ("raw_text", "id", "audio", "vision", "regression_labels")


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def load_dataset(
    path: str | Path,
    format: Format = "auto",
    dataset: DatasetName = "auto",
    nonfinite: NonfinitePolicy = "replace",
    allow_overlap: bool = False,
) -> MSADataset:
    """Read a dataset file or folder.

    Args:
        path: an MMSA pickle, a CMU-SDK word-aligned pickle, a folder holding ``label.csv``,
            the ``label.csv`` file itself, or a packaged dataset's name (``mosi-demo``: 229 MOSI
            clips with COVAREP/FACET, see :mod:`msakit.data.packaged`).
        format: ``"auto"`` detects it: a folder or ``*.csv`` is ``label_csv``; a pickle holding a
            dict is ``mmsa``, one holding a list is ``cmu_sdk``.
        dataset: the family (``mosi``, ``mosei``, ``sims``, ``simsv2``, ``custom``), which sets
            the label range; ``"auto"`` detects it from the feature dimensions (pickles) or the
            folder name (label.csv).
        nonfinite: NaN/±inf in features: ``"replace"`` by 0 and count them in
            ``replaced_nonfinite``, or ``"error"``.
        allow_overlap: accept a clip id, or an identical clip (same transcript and features),
            in two of train/valid/test (train/test leakage; see :func:`find_overlaps`). A clip id
            twice within one split is always refused.

    Raises:
        DataError: unreadable or inconsistent input; the message says what and where.
    """
    from msakit.data.packaged import PACKAGED_DATASETS, packaged_entries

    if nonfinite not in ("replace", "error"):
        raise DataError(f"nonfinite must be 'replace' or 'error', not {nonfinite!r}")
    if str(path) in PACKAGED_DATASETS and not Path(path).exists():
        if format not in ("auto", "cmu_sdk") or dataset not in ("auto", "mosi"):
            raise DataError(f"{path} is a packaged word-aligned MOSI set: use format auto/"
                            f"cmu_sdk and dataset auto/mosi (got {format}, {dataset})")
        entries, family = packaged_entries(str(path))
        return read_cmu_sdk_pickle(str(path), family, nonfinite, content=entries)
    path = Path(path)
    if dataset != "auto" and dataset not in LABEL_RANGES:
        raise DataError(
            f"unknown dataset {dataset!r}; choose one of auto, {', '.join(LABEL_RANGES)}"
        )
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (packaged datasets: "
                        f"{', '.join(PACKAGED_DATASETS)})")
    if not path.is_dir() and not path.is_file():
        raise DataError(f"{path}: not a regular file or folder (a device, FIFO or socket)")
    result = _read(path, format, dataset, nonfinite)
    check_splits(result, allow_overlap)
    return result


def _read(path: Path, format: Format, dataset: DatasetName,
          nonfinite: NonfinitePolicy) -> MSADataset:
    if format == "auto":
        if path.is_dir() or path.suffix.lower() == ".csv":
            format = "label_csv"
        else:
            content = safe_load(path)
            if isinstance(content, dict):
                return _read_mmsa_content(path, dataset, nonfinite, content, owned=True)
            if isinstance(content, (list, tuple)):
                return read_cmu_sdk_pickle(path, dataset, nonfinite, content=content)
            raise DataError(
                f"{path}: cannot tell the format: the pickle holds a {type(content).__name__}; "
                "an MMSA pickle holds a dict of splits, a CMU-SDK word-aligned pickle a list of "
                "clips"
            )
    if format == "mmsa":
        return _read_mmsa_content(path, dataset, nonfinite, safe_load(path), owned=True)
    if format == "cmu_sdk":
        return read_cmu_sdk_pickle(path, dataset, nonfinite)
    if format == "label_csv":
        return read_label_csv(path, dataset)
    raise DataError(f"unknown format {format!r}; choose auto, mmsa, cmu_sdk or label_csv")


def data_fingerprint(path: str | Path) -> dict[str, str]:
    """The absolute path of a dataset and the SHA-256 of its file (``label.csv`` for a folder),
    recorded in a run so that it is re-read from anywhere and never silently replaced."""
    import hashlib

    from msakit.data.packaged import is_packaged, packaged_path

    if is_packaged(path) and not Path(path).exists():  # e.g. "mosi-demo": kept as a name
        name, data_file = str(path), packaged_path(str(path))
    else:
        resolved = Path(path).resolve()
        name = str(resolved)
        data_file = resolved / "label.csv" if resolved.is_dir() else resolved
    digest = hashlib.sha256()
    with data_file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": name, "sha256": digest.hexdigest()}


def _clip_digest(split: Split, row: int) -> str:
    import hashlib

    digest = hashlib.sha256(split.texts[row].encode("utf-8"))
    for clips in (split.audio, split.vision):
        if clips is not None:
            array = np.ascontiguousarray(clips[row])
            digest.update(str(array.shape).encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def find_overlaps(dataset: MSADataset) -> list[dict[str, str]]:
    """Clips present in two splits: the same clip id, or (for data with audio/vision features)
    an identical clip (same transcript and the same features) under another id.

    Returns:
        ``[{"kind": "id" | "identical", "splits": "train/test", "first": id, "second": id}]``.
    """
    names = [n for n in SPLIT_NAMES if n in dataset.splits]
    # text-only data (label.csv) has no feature rows: two clips may say the same short sentence
    has_features = any(split.audio is not None or split.vision is not None
                       for split in dataset.splits.values())
    found = []
    for i, first_name in enumerate(names):
        first = dataset.splits[first_name]
        first_ids = set(first.ids)
        digests = {_clip_digest(first, r): first.ids[r] for r in range(len(first))} \
            if has_features else {}
        for second_name in names[i + 1:]:
            second = dataset.splits[second_name]
            for row, clip_id in enumerate(second.ids):
                pair = f"{first_name}/{second_name}"
                if clip_id in first_ids:
                    found.append({"kind": "id", "splits": pair, "first": clip_id,
                                  "second": clip_id})
                elif digests and (other := digests.get(_clip_digest(second, row))) is not None:
                    found.append({"kind": "identical", "splits": pair, "first": other,
                                  "second": clip_id})
    return found


def check_splits(dataset: MSADataset, allow_overlap: bool = False) -> None:
    """Refuse a clip id twice within a split, and (unless ``allow_overlap``) clips shared by
    two splits (:func:`find_overlaps`)."""
    for name, split in dataset.splits.items():
        if len(set(split.ids)) != len(split.ids):
            seen: set[str] = set()
            duplicate = next(i for i in split.ids if i in seen or seen.add(i))
            count = len(split.ids) - len(set(split.ids))
            raise DataError(f"{dataset.source} [{name}]: clip id {duplicate!r} appears more "
                            f"than once ({count} repeated id(s) in this split)")
    if allow_overlap:
        return
    overlaps = find_overlaps(dataset)
    if overlaps:
        first = overlaps[0]
        what = (f"clip {first['first']!r} is in both" if first["kind"] == "id" else
                f"clips {first['first']!r} and {first['second']!r} are identical (transcript "
                "and features) across")
        raise DataError(
            f"{dataset.source}: {len(overlaps)} clip(s) shared between splits, e.g. {what} "
            f"{first['splits'].replace('/', ' and ')}: that leaks test data into training. "
            "`msakit data inspect` lists them; set data.allow_overlap=true to accept them")


# --------------------------------------------------------------------------------------------
# MMSA pickle
# --------------------------------------------------------------------------------------------

#: an owned MMSA feature array is used in place when its clips' true lengths fill this share
VIEW_MIN_FILL = 0.75


#: Fields that only a split of an MMSA pickle holds: a top-level key holding them is a split.
_MMSA_SPLIT_FIELDS = frozenset({"id", "raw_text", "audio", "vision", "regression_labels"})


def _canonical_mmsa_splits(data: dict, source: str) -> dict:
    """``data`` with a split under another name (``dev``, ``val``, ``Valid``: the names label.csv's
    ``mode`` accepts) under its own name; refuses two keys for one split and any other key that
    holds a split, instead of dropping its clips."""
    from msakit.data.csv_table import SPLIT_ALIASES

    renamed: dict[str, str] = {}
    for key, value in data.items():
        if key in SPLIT_NAMES or key == "extractor":
            continue
        split = SPLIT_ALIASES.get(key.strip().lower()) if isinstance(key, str) else None
        if split is None:
            if isinstance(value, dict) and _MMSA_SPLIT_FIELDS & set(value):
                raise DataError(f"{source}: key {key!r} holds a split, but an MMSA pickle's splits "
                                "are train, valid (val, dev) and test; rename or remove it")
            continue
        if split in data or split in renamed:
            other = split if split in data else renamed[split]
            raise DataError(f"{source}: keys {other!r} and {key!r} both name the {split} split; "
                            "keep one")
        renamed[split] = key
    if not renamed:
        return data
    out = {k: v for k, v in data.items() if k not in renamed.values()}
    out.update({split: data[key] for split, key in renamed.items()})
    return out


def _read_mmsa_content(path: Path, dataset: DatasetName, nonfinite: NonfinitePolicy, data: Any,
                       owned: bool) -> MSADataset:
    """``owned``: ``data`` was unpickled for this call alone, so its feature arrays may be used
    in place or released once copied (float64 becomes float32 once, replacing the array in
    ``data``): peak memory stays near the arrays' own size (see ``VIEW_MIN_FILL``)."""
    source = str(path)
    if not isinstance(data, dict):
        raise DataError(
            f"{source}: an MMSA pickle holds a dict with keys train/valid/test, found a "
            f"{type(data).__name__}"
        )
    data = _canonical_mmsa_splits(data, source)
    missing = [s for s in SPLIT_NAMES if s not in data]
    if missing:
        raise DataError(
            f"{source}: missing split(s) {missing}; an MMSA pickle has train, valid and test "
            f"(found keys {sorted(map(str, data))})"
        )
    extractor = data.get("extractor")
    if extractor is not None and not isinstance(extractor, dict):
        raise DataError(f"{source}: 'extractor' must be a dict, found {type(extractor).__name__}")

    replaced: dict[str, int] = {}
    splits: dict[str, Split] = {}
    dims: dict[str, int] | None = None
    dims_from: str = ""
    has_unimodal = []
    for split_name in SPLIT_NAMES:
        fields = data[split_name]
        where = f"{source} [{split_name}]"
        if not isinstance(fields, dict):
            raise DataError(f"{where}: expected a dict of fields, found {type(fields).__name__}")
        split, split_dims = _read_mmsa_split(fields, where, split_name, nonfinite, replaced,
                                             owned)
        if dims is None:
            dims, dims_from = split_dims, split_name
        elif split_dims != dims:
            raise DataError(
                f"{source}: inconsistent feature dims: split {dims_from!r} has audio "
                f"{dims['audio']}-d / vision {dims['vision']}-d but split {split_name!r} has "
                f"audio {split_dims['audio']}-d / vision {split_dims['vision']}-d"
            )
        splits[split_name] = split
        has_unimodal.append(bool(split.extra_labels))

    assert dims is not None
    if any(has_unimodal) and not all(has_unimodal):
        raise DataError(
            f"{source}: unimodal labels (regression_labels_T/A/V) present in some splits only"
        )
    name = dataset if dataset != "auto" else MMSA_FEATURE_DIMS.get(
        (dims["audio"], dims["vision"]), "custom"
    )
    result = MSADataset(
        name=name, source=source, splits=splits, word_aligned=False, feature_dims=dims,
        replaced_nonfinite=replaced, extractor=extractor,
    )
    _check_dataset_labels(result)
    return result


def _array(fields: dict, key: str, where: str) -> np.ndarray:
    try:
        return np.asarray(fields[key])
    except KeyError:
        raise DataError(
            f"{where}: missing field {key!r} (fields present: {sorted(map(str, fields))})"
        ) from None


def _read_mmsa_split(
    fields: dict, where: str, split_name: str, nonfinite: NonfinitePolicy,
    replaced: dict[str, int], owned: bool = False,
) -> tuple[Split, dict[str, int]]:
    for key in MMSA_REQUIRED_KEYS:
        if key not in fields:
            raise DataError(
                f"{where}: missing field {key!r}; an MMSA split needs "
                f"{', '.join(MMSA_REQUIRED_KEYS)} (fields present: {sorted(map(str, fields))})"
            )
    raw_text = _array(fields, "raw_text", where)
    if raw_text.ndim != 1:
        raise DataError(f"{where}: field 'raw_text' must have shape (N,), found {raw_text.shape}")
    n = raw_text.shape[0]

    ids = _array(fields, "id", where)
    if ids.shape != (n,):
        raise DataError(
            f"{where}: field 'id' has shape {ids.shape}, expected ({n},) like raw_text"
        )
    ids_list = _strings(ids, "id", where)
    video_ids = [split_clip_id(i, where, row) for row, i in enumerate(ids_list)]

    labels = _labels(fields, "regression_labels", n, where)
    extra = {}
    present = [k for k, key in SIMS_UNIMODAL_KEYS.items() if key in fields]
    if present and len(present) != 3:
        raise DataError(
            f"{where}: unimodal labels must come as all of regression_labels_T/A/V; found only "
            f"{[SIMS_UNIMODAL_KEYS[k] for k in present]}"
        )
    for short in present:
        extra[short] = _labels(fields, SIMS_UNIMODAL_KEYS[short], n, where)

    texts = check_texts(_strings(raw_text, "raw_text", where), ids_list, where)

    # True lengths of aligned data: the text_bert mask (it counts [CLS]/[SEP], as MMSA does).
    text_lengths = None
    if "text_bert" in fields:
        text_bert = np.asarray(fields["text_bert"])
        if n and (text_bert.ndim != 3 or text_bert.shape[0] != n or text_bert.shape[1] != 3):
            raise DataError(
                f"{where}: field 'text_bert' has shape {text_bert.shape}, expected ({n}, 3, L) "
                "(token ids, attention mask, segment ids)"
            )
        text_lengths = text_bert[:, 1, :].sum(axis=1).astype(np.int64) if n else None

    dims = {}
    per_modality: dict[str, list[np.ndarray]] = {}
    for modality in ("audio", "vision"):
        features = _array(fields, modality, where)
        if features.ndim != 3 or features.shape[0] != n:
            raise DataError(
                f"{where}: field {modality!r} has shape {features.shape}, expected ({n}, L, D) "
                f"with N={n} clips like raw_text"
            )
        _require_real(features, modality, where)
        if owned and features.dtype != np.float32:
            features = features.astype(np.float32)
            fields[modality] = features  # frees the original once converted
        padded_length, dim = features.shape[1], features.shape[2]
        lengths_key = f"{modality}_lengths"
        if lengths_key in fields:
            lengths = np.asarray(fields[lengths_key]).reshape(-1)
            if lengths.shape != (n,):
                raise DataError(
                    f"{where}: field {lengths_key!r} has shape "
                    f"{np.asarray(fields[lengths_key]).shape}, expected ({n},)"
                )
            lengths = _integer_lengths(lengths, lengths_key, where, ids_list)
        elif text_lengths is not None and padded_length == text_bert.shape[2]:
            lengths = text_lengths
        else:
            lengths = np.full(n, padded_length, dtype=np.int64)
        bad = np.flatnonzero((lengths < 0) | (lengths > padded_length))
        if bad.size:
            row = int(bad[0])
            raise DataError(
                f"{where}: {lengths_key} of clip {ids_list[row]!r} (row {row}) is {lengths[row]}, "
                f"outside 0..{padded_length} (the padded length of {modality!r})"
            )
        clips = [features[i, : lengths[i]] for i in range(n)]
        # An owned array whose clips fill most of it is kept, clips being views into it; one
        # mostly padding is copied at true length and released (peak: all arrays plus the
        # true-length copy of the current one)
        kept_fraction = float(lengths.sum()) / max(1, n * padded_length)
        per_modality[modality] = clean_features(
            clips, f"{where} field {modality!r}", f"{split_name}/{modality}", nonfinite, replaced,
            ids_list, copy=not owned or kept_fraction < VIEW_MIN_FILL,
        )
        del clips
        if owned:
            fields[modality] = features = None
        dims[modality] = int(dim)

    split = Split(
        ids=ids_list, video_ids=video_ids, texts=texts, labels=labels,
        audio=per_modality["audio"], vision=per_modality["vision"], extra_labels=extra,
        positions=clip_positions(video_ids, [i.rpartition("$_$")[2] for i in ids_list]),
    )
    return split, dims


def _strings(values: np.ndarray, key: str, where: str) -> list[str]:
    """Cells of a text field as ``str`` (bytes decoded); anything else (``None``, numbers) is
    refused rather than turned into the text "None"."""
    out = []
    for row, value in enumerate(values.tolist()):
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            raise DataError(f"{where}: field {key!r} of row {row} is {value!r} "
                            f"({type(value).__name__}), expected a string")
        out.append(value)
    return out


def _require_real(values: np.ndarray, key: str, where: str) -> None:
    if np.issubdtype(values.dtype, np.complexfloating):
        raise DataError(f"{where}: field {key!r} holds complex numbers ({values.dtype}); "
                        "expected real numbers")
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise DataError(f"{where}: field {key!r} has dtype {values.dtype}, expected real numbers")


def _integer_lengths(lengths: np.ndarray, key: str, where: str, ids: list[str]) -> np.ndarray:
    """Sequence lengths as int64; 8.9 is refused, not truncated to 8."""
    _require_real(lengths, key, where)
    if np.issubdtype(lengths.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(lengths) | (lengths != np.round(lengths)))
        if bad.size:
            row = int(bad[0])
            raise DataError(f"{where}: {key} of clip {ids[row]!r} (row {row}) is {lengths[row]}, "
                            "expected a whole number of steps")
    return lengths.astype(np.int64)


def _labels(fields: dict, key: str, n: int, where: str) -> np.ndarray:
    values = np.asarray(fields[key])
    if values.shape not in ((n,), (n, 1)):
        raise DataError(f"{where}: field {key!r} has shape {values.shape}, expected ({n},)")
    _require_real(values, key, where)
    try:
        values = values.reshape(n).astype(np.float32)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: field {key!r} is not numeric ({err})") from err
    return values


def _check_dataset_labels(dataset: MSADataset) -> None:
    for split_name, split in dataset.splits.items():
        where = f"{dataset.source} [{split_name}]"
        check_labels(split.labels, dataset.label_range, dataset.name, where, "label", split.ids)
        for short, values in split.extra_labels.items():
            check_labels(values, dataset.label_range, dataset.name, where, f"label_{short}",
                         split.ids)


# --------------------------------------------------------------------------------------------
# CMU-SDK word-aligned pickle
# --------------------------------------------------------------------------------------------

_SEGMENT_ID = re.compile(r"^(?P<video>.+)\[(?P<index>\d+)\]$")


def read_cmu_sdk_pickle(
    path: str | Path,
    dataset: DatasetName = "auto",
    nonfinite: NonfinitePolicy = "replace",
    content: Any = None,
) -> MSADataset:
    """Read a CMU-SDK word-aligned pickle into one split ``"all"``.

    Segment ``"video[k]"`` (0-based) becomes clip id ``"video$_$<k+1>"``, matching the 1-based
    ``clip_id`` of MMSA's ``label.csv``. The transcript is the aligned words joined by spaces (the
    words the features belong to), and ``words`` keeps them for sub-word expansion.
    """
    path = Path(path)
    source = str(path)
    data = safe_load(path) if content is None else content
    if not isinstance(data, (list, tuple)):
        raise DataError(
            f"{source}: a CMU-SDK word-aligned pickle holds a list of clips, found a "
            f"{type(data).__name__}"
        )
    if not data:
        raise DataError(f"{source}: the pickle holds no clips")
    where = f"{source} [all]"
    ids, video_ids, words_list, labels, audio, vision = [], [], [], [], [], []
    positions: list[int] = []
    dims: dict[str, int] | None = None
    for row, entry in enumerate(data):
        shape_hint = ("((word_ids (L,), facet (L, D_v), covarep (L, D_a), words [L]), "
                      "[[label]], 'video[k]')")
        try:
            (word_ids, facet, covarep, words), label, segment = entry
        except (TypeError, ValueError):
            raise DataError(f"{where}: entry {row} is not {shape_hint}") from None
        segment = str(segment)
        match = _SEGMENT_ID.match(segment)
        if not match:
            raise DataError(
                f"{where}: entry {row} has segment id {segment!r}, expected 'video[k]'"
            )
        clip_id = f"{match['video']}$_${int(match['index']) + 1}"
        facet, covarep = np.asarray(facet), np.asarray(covarep)
        _require_real(facet, f"facet of entry {row}", where)
        _require_real(covarep, f"covarep of entry {row}", where)
        words = _strings(np.asarray(list(words), dtype=object), f"words of entry {row}", where)
        length = len(words)
        if facet.ndim != 2 or covarep.ndim != 2 or facet.shape[0] != length \
                or covarep.shape[0] != length or len(word_ids) != length:
            raise DataError(
                f"{where}: entry {row} ({segment}): mismatched lengths: {length} words, "
                f"{len(word_ids)} word ids, facet {facet.shape}, covarep {covarep.shape}; "
                f"expected facet ({length}, D_v) and covarep ({length}, D_a)"
            )
        entry_dims = {"audio": int(covarep.shape[1]), "vision": int(facet.shape[1])}
        if dims is None:
            dims = entry_dims
        elif entry_dims != dims:
            raise DataError(
                f"{where}: inconsistent feature dims: entry {row} ({segment}) has covarep "
                f"{covarep.shape[1]}-d / facet {facet.shape[1]}-d, earlier entries "
                f"{dims['audio']}-d / {dims['vision']}-d"
            )
        label_array = np.asarray(label)
        _require_real(label_array, f"label of entry {row}", where)
        label_array = label_array.astype(np.float64).reshape(-1)
        if label_array.size != 1:
            raise DataError(
                f"{where}: entry {row} ({segment}) has label of shape {np.shape(label)}, "
                "expected one value ([[label]])"
            )
        ids.append(clip_id)
        positions.append(int(match["index"]) + 1)
        video_ids.append(match["video"])
        words_list.append(words)
        labels.append(float(label_array[0]))
        audio.append(covarep)
        vision.append(facet)

    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{where}: segment of clip {duplicate!r} appears twice")
    replaced: dict[str, int] = {}
    texts = check_texts([" ".join(w) for w in words_list], ids, where)
    split = Split(
        ids=ids, video_ids=video_ids, texts=texts, labels=np.asarray(labels, dtype=np.float32),
        audio=clean_features(audio, f"{where} covarep (audio)", "all/audio", nonfinite,
                             replaced, ids),
        vision=clean_features(vision, f"{where} facet (vision)", "all/vision", nonfinite,
                              replaced, ids),
        words=words_list,
        positions=positions,
    )
    assert dims is not None
    name = dataset if dataset != "auto" else CMU_SDK_VISION_DIMS.get(dims["vision"], "custom")
    result = MSADataset(
        name=name, source=source, splits={"all": split}, word_aligned=True, feature_dims=dims,
        replaced_nonfinite=replaced,
    )
    _check_dataset_labels(result)
    return result


# --------------------------------------------------------------------------------------------
# label.csv folder (text only)
# --------------------------------------------------------------------------------------------

#: ``mode`` may be left out: every row then goes to train (use --folds to cross-validate)
LABEL_CSV_REQUIRED = ("video_id", "clip_id", "text", "label")


def read_label_csv(path: str | Path, dataset: DatasetName = "auto") -> MSADataset:
    """Read MMSA's ``label.csv`` (a folder holding it, or the file). Text only: feature dims 0.

    Rows are read strictly (:func:`msakit.data.csv_table.read_table`: a row with more fields
    than columns is refused, naming the line). ``mode`` takes the split names ``msakit extract``
    takes (train, valid/val/dev, test; any case); a row without a mode goes to train.
    Optional ``label_T``/``label_A``/``label_V`` columns (CH-SIMS) become unimodal labels.
    ``dataset="auto"`` takes the family from the folder name (``mosi``, ``mosei``, ``sims``,
    ``simsv2`` in it), else ``sims`` when unimodal labels are present, else ``custom``.
    """
    from msakit.data.csv_table import read_table, split_of_mode

    path = Path(path)
    csv_path = path / "label.csv" if path.is_dir() else path
    source = str(csv_path)
    if not csv_path.exists():
        raise DataError(f"{path}: no label.csv in this folder")
    columns, rows = read_table(csv_path, LABEL_CSV_REQUIRED)
    unimodal_columns = {k: f"label_{k}" for k in ("T", "A", "V") if f"label_{k}" in columns}

    def number(line: int, row: dict[str, str], column: str) -> float:
        try:
            value = float(row[column])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataError(f"{source}: line {line}: column {column!r} is {row[column]!r}, "
                            "expected a finite number")
        return value

    by_split: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for line, row in rows:
        for column in ("video_id", "clip_id"):
            if not row[column]:
                raise DataError(f"{source}: line {line}: empty {column}")
        split_name = split_of_mode(row.get("mode", ""), f"{source}: line {line}") or "train"
        by_split.setdefault(split_name, []).append((line, row))

    splits: dict[str, Split] = {}
    for split_name in SPLIT_NAMES:
        members = by_split.get(split_name)
        if not members:
            continue
        where = f"{source} [{split_name}]"
        video_ids = [row["video_id"] for _, row in members]
        ids = [f"{row['video_id']}$_${row['clip_id']}" for _, row in members]
        texts = check_texts(
            [row["text"] for _, row in members], ids, where,
            row_label=lambda i, members=members: f"line {members[i][0]}",
        )
        splits[split_name] = Split(
            ids=ids, video_ids=video_ids, texts=texts,
            labels=np.array([number(line, row, "label") for line, row in members],
                            dtype=np.float32),
            extra_labels={k: np.array([number(line, row, col) for line, row in members],
                                      dtype=np.float32)
                          for k, col in unimodal_columns.items()},
            positions=clip_positions(video_ids, [row["clip_id"] for _, row in members]),
        )
    if not splits:
        raise DataError(f"{source}: holds no rows")

    if dataset == "auto":
        folder = (csv_path.parent.name or csv_path.resolve().parent.name).lower()
        dataset = next((n for n in ("simsv2", "mosei", "mosi", "sims") if n in folder), None) \
            or ("sims" if unimodal_columns else "custom")
    result = MSADataset(
        name=dataset, source=source, splits=splits, word_aligned=False,
        feature_dims={"audio": 0, "vision": 0},
    )
    _check_dataset_labels(result)
    return result
