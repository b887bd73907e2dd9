"""``msakit predict``: sentiment of new clips or transcripts with a trained model.

A model comes from a run folder (``--run``), an exported folder (``--model``, see
:mod:`msakit.pretrained`) or, with neither, the pretrained text model shipped in the package.

For models that read audio or vision, the clips' features are computed with the extractor config
recorded in the run's ``data.json``
(``extractor``, copied from the training pickle that ``msakit extract`` wrote), normalised with
the training statistics recorded there, then fed to every selected checkpoint of the run.
A run trained on features msakit cannot compute (MMSA's COVAREP/Facet/OpenFace pickles,
CMU-SDK pickles: ``extractor`` is null) is refused: its model expects inputs that new clips
cannot be given.

Run folder (layout and reading: :mod:`msakit.runfolder`): ``config.yaml`` and ``data.json`` at
the top, selected weights ``seed<S>/<partition>/best.safetensors`` (read with
:func:`msakit.runfolder.load_best_state`), or a single training folder holding them
itself. With several checkpoints (seeds x folds), the prediction is their mean and the spread is reported.

What a model can serve (:attr:`TrainedRun.serves`, written to an export's ``feature_spec.json``
and model card, answered by ``msakit serve``'s ``/healthz``) is one of :data:`SERVES`:
``transcripts`` (a text-only model), ``clips`` (audio/vision that ``msakit extract`` computes from
raw media) or ``features`` (audio/vision features msakit cannot compute, e.g. MMSA's COVAREP/FACET:
such a model scores only precomputed feature files, :func:`load_feature_file`).

A text-only model (it reads no audio or vision): ``--text`` alone, or a clip
whose transcript is given, beside it (``<clip>.txt``) or made by the offline speech recogniser
(pocketsphinx; flagged ``low_quality``). The clip's audio and video do not change its score.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msakit import runfolder
from msakit.extract.config import TOOL_NAME, ExtractorConfig

#: Test metrics a model's repr shows.
REPR_METRICS = ("Non0_acc_2", "Non0_F1_score", "Mult_acc_2", "MAE", "Corr")
#: 7-class labels of the rounded score on MOSI/MOSEI's [-3, 3] scale.
SEVEN_CLASSES = {
    -3: "strongly negative", -2: "negative", -1: "weakly negative", 0: "neutral",
    1: "weakly positive", 2: "positive", 3: "strongly positive",
}


#: Model extras that are hidden representations, not contributions: left out of predictions.
REPRESENTATION_EXTRAS = ("fused", "hidden", "hyper_modality")


def _is_contribution(name: str) -> bool:
    return name not in REPRESENTATION_EXTRAS and not name.startswith("feature_")


#: What a model can score, by what it reads (see the module docstring).
SERVES_TRANSCRIPTS = "transcripts"
SERVES_CLIPS = "clips"
SERVES_FEATURES = "features"
SERVES = {
    SERVES_TRANSCRIPTS: "transcripts only (text model); a clip is scored by its transcript",
    SERVES_CLIPS: "raw clips (with transcripts): msakit extract computes the audio/vision "
                  "features it reads",
    SERVES_FEATURES: "only precomputed audio/vision features (an .npz per clip with its "
                     "transcript): it reads features msakit cannot compute from raw clips",
}

#: Arrays of a precomputed feature file (``.npz``), see :func:`load_feature_file`.
FEATURE_FILE_SUFFIX = ".npz"
FEATURE_FILE_KEYS = ("audio", "vision", "words", "text")


class RunIncompatibleError(ValueError):
    """The run cannot predict from raw clips; the message says why and what to do."""


@dataclass(repr=False)
class TrainedRun:
    """A trained model ready to predict: a run folder, or an exported model folder.

    Attributes:
        run_dir: the run folder or the exported folder.
        checkpoints: training folders whose ``best.safetensors`` is used (a run), or ``[]``
            (exported).
        extractor: the :class:`ExtractorConfig` the training features were made with; ``None``
            for a text-only model (it needs no audio/vision features).
        normalization: the training statistics recorded with them (or ``None``).
        label_range: the dataset family's label range (``(-3, 3)`` for MOSI-like data).
        states: the members' model state dicts when they are already loaded (exported models);
            ``None``: read ``best.safetensors`` of each checkpoint folder.
    """

    run_dir: Path
    config: Any
    data_info: dict
    extractor: ExtractorConfig | None
    normalization: dict | None
    checkpoints: list[Path]
    label_range: tuple[float, float]
    notes: list[str] = field(default_factory=list)
    states: list[dict] | None = None
    _built: dict = field(default_factory=dict, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def modalities(self) -> list[str]:
        """What the model reads: ``data.modalities`` that have features, narrowed by the model's
        own ``model.modalities`` where it has one (``[text]`` for a text-only LF-DNN)."""
        dims = self.data_info.get("feature_dims") or {}
        chosen = getattr(self.config.model, "modalities", None) or ("text", "audio", "vision")
        return [m for m in ("text", "audio", "vision")
                if m in self.config.data.modalities and m in chosen
                and (m == "text" or int(dims.get(m, 0) or 0))]

    @property
    def feature_dims(self) -> dict[str, int]:
        """Audio/vision feature sizes the model reads (0: it does not read that modality)."""
        dims = self.data_info.get("feature_dims") or {}
        reads = self.modalities
        return {m: int(dims.get(m, 0) or 0) if m in reads else 0 for m in ("audio", "vision")}

    @property
    def text_only(self) -> bool:
        """The model reads the transcript only (no audio/vision features)."""
        return not any(self.feature_dims.values())

    @property
    def serves(self) -> str:
        """What it can score: one of :data:`SERVES` (see the module docstring)."""
        if self.text_only:
            return SERVES_TRANSCRIPTS
        return SERVES_CLIPS if self.extractor is not None else SERVES_FEATURES

    def summary_metrics(self) -> dict[str, dict]:
        """The test metrics (``{name: {"mean", "std", "n"}}``) recorded beside the model
        (``metrics.json`` of the run or export), or ``{}``."""
        try:
            summary = runfolder.read_metrics(self.run_dir, missing_ok=True).get("summary")
        except (OSError, ValueError, AttributeError):
            return {}
        return summary if isinstance(summary, dict) else {}

    def __repr__(self) -> str:
        metrics = self.summary_metrics()
        scored = ", ".join(f"{name}={metrics[name]['mean']:.3f}" for name in REPR_METRICS
                           if isinstance(metrics.get(name), dict) and "mean" in metrics[name])
        trained_on = self.data_info.get("dataset", "custom")
        return (f"{type(self).__name__}(model={self.config.model.name!r}, "
                f"reads={'+'.join(self.modalities)}, serves={self.serves}, "
                f"members={self.members}, trained_on={trained_on!r}"
                + (f", test: {scored}" if scored else "") + f", path='{self.run_dir}')")

    @property
    def members(self) -> int:
        return len(self.states) if self.states is not None else len(self.checkpoints)

    def member_states(self, device: str = "cpu"):
        """Yield each member's model state dict (read lazily from ``best.safetensors`` for a
        run, with :func:`msakit.runfolder.load_best_state`)."""
        if self.states is not None:
            yield from self.states
            return
        for folder in self.checkpoints:
            yield runfolder.load_best_state(folder, device)

    def models(self, device: str = "cpu") -> list:
        """The members as evaluation-mode models on ``device``, built once and kept (building
        one loads the language model: seconds; a server predicts many times)."""
        from msakit.models import FeatureDims, create_model

        with self._lock:
            if device not in self._built:
                built = []
                for state in self.member_states(device):
                    model = create_model(self.config.model, FeatureDims(**self.feature_dims))
                    runfolder.load_state_into(model, state, self.run_dir)
                    built.append(model.to(device).eval())
                self._built[device] = built
            return self._built[device]

    def predict(self, texts: str | Sequence[str | None] | None = None, *,
                clips: str | Path | Sequence[str | Path] | None = None,
                features: str | Path | Sequence[str | Path] | None = None,
                **options) -> ClipPrediction | list[ClipPrediction]:
        """Full predictions (score, polarity, 7-class, contributions, warnings).

        Args:
            texts: one transcript (``str``) or a list of them; alone for a text model, or one
                per clip / feature file (``None`` entries: found beside the clip, or ASR).
            clips: media files (models that serve ``clips``, or a text model: the clip's
                transcript is scored).
            features: precomputed feature files (:func:`load_feature_file`).
            options: passed to :func:`predict_clips` (``asr``, ``strict``) and the others
                (``device``).

        Returns:
            one :class:`ClipPrediction` when a single ``str``/path was given, else a list.
        """
        single = all(isinstance(x, (str, Path)) or x is None for x in (texts, clips, features)) \
            and any(x is not None for x in (texts, clips, features))
        texts_list = [texts] if isinstance(texts, str) else None if texts is None else list(texts)
        if features is not None:
            results = predict_features(_as_list(features), self, texts_list, **options)
        elif clips is not None:
            results = predict_clips(_as_list(clips), self, texts_list, **options)
        else:
            results = predict_texts(texts_list or [], self, **options)
        return results[0] if single else results

    def __call__(self, texts: str | Sequence[str | None] | None = None, **inputs
                 ) -> float | list[float]:
        """Sentiment scores, as a transformers pipeline or a scikit-learn model returns them:
        ``model("text")`` is a float, ``model(["a", "b"])`` a list (one per input); clips and
        feature files by keyword, as for :meth:`predict`."""
        results = self.predict(texts, **inputs)
        if isinstance(results, ClipPrediction):
            return results.score
        return [r.score for r in results]


@dataclass
class ClipPrediction:
    """Prediction for one clip.

    Attributes:
        score: mean over checkpoints of the model's sentiment prediction.
        score_std: spread over checkpoints (0 with one checkpoint).
        polarity: ``positive`` (score > 0), ``negative`` (< 0) or ``neutral``.
        class7: the rounded score on the [-3, 3] scale and its name.
        contributions: the model's per-sample extras (gates, unimodal predictions), averaged
            over checkpoints, as nested lists of floats.
        modalities: what the model read (e.g. ``["text"]`` for a text-only model).
        low_quality: the transcript came from speech recognition (often wrong).
    """

    clip: str | None
    text: str
    text_source: str
    score: float
    score_std: float
    polarity: str
    class7: int
    class7_name: str
    contributions: dict[str, Any]
    checkpoints: int
    info: dict
    warnings: list[str]
    modalities: list[str] = field(default_factory=list)
    low_quality: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _read_data_record(folder: Path) -> dict:
    path = runfolder.data_record_path(folder)
    try:
        return runfolder.read_data_record(folder)
    except FileNotFoundError:
        raise RunIncompatibleError(f"{path}: missing; is {path.parent} a run folder written by "
                                   "`msakit train`?") from None
    except ValueError as err:
        raise RunIncompatibleError(f"{path}: not valid JSON ({err})") from None


def find_checkpoints(run_dir: Path, checkpoint: str | None = None) -> list[Path]:
    """Training folders holding ``best.safetensors``: ``run_dir`` itself, ``run_dir/<checkpoint>``
    (which must lie inside ``run_dir``), or every ``run_dir/seed*/*``."""
    if checkpoint:
        chosen = run_dir / checkpoint
        inside = run_dir.resolve()
        if chosen.resolve() != inside and inside not in chosen.resolve().parents:
            raise RunIncompatibleError(
                f"--checkpoint {checkpoint!r} is outside the run folder {run_dir}: name a "
                "training folder of the run, e.g. seed1/fold0")
        if not runfolder.has_best_weights(chosen):
            raise RunIncompatibleError(f"{chosen}: no {runfolder.BEST_WEIGHTS} there")
        return [chosen]
    if runfolder.has_best_weights(run_dir):
        return [run_dir]
    found = [d for d in runfolder.training_dirs(run_dir, holding=runfolder.BEST_WEIGHTS)
             if runfolder.has_best_weights(d)]
    if not found:
        raise RunIncompatibleError(
            f"{run_dir}: no trained checkpoint ({runfolder.BEST_WEIGHTS} here or in "
            "seed*/<partition>/)")
    return found


def load_trained_run(run_dir: str | Path, checkpoint: str | None = None,
                     require_clip_features: bool = False) -> TrainedRun:
    """Read a run folder; :attr:`TrainedRun.serves` says what it can score.

    Args:
        require_clip_features: refuse a run whose audio/vision features msakit cannot compute
            (by default it is loaded and serves precomputed features only).

    Raises:
        RunIncompatibleError: not a run folder, or trained on features msakit cannot compute.
    """
    from msakit.config import ConfigError
    from msakit.data.dataset import LABEL_RANGES

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunIncompatibleError(f"{run_dir}: no such run folder")
    checkpoints = find_checkpoints(run_dir, checkpoint)
    config_folder = run_dir if runfolder.has_config(run_dir) else checkpoints[0]
    data_folder = run_dir if runfolder.data_record_path(run_dir).is_file() else checkpoints[0]
    try:
        config = runfolder.load_config(config_folder)
    except (ConfigError, FileNotFoundError, KeyError) as err:
        raise RunIncompatibleError(f"{runfolder.config_path(config_folder)}: cannot load the "
                                   f"run's config: {err}") from err
    data_info = _read_data_record(data_folder)
    label_range = LABEL_RANGES.get(data_info.get("dataset", "custom"), LABEL_RANGES["custom"])
    run = TrainedRun(run_dir=run_dir, config=config, data_info=data_info, extractor=None,
                     normalization=None, checkpoints=checkpoints, label_range=tuple(label_range))
    run.extractor, run.normalization, run.notes = check_feature_source(
        run_dir, data_info, require=require_clip_features, reads=run.modalities)
    return run


#: config keys that may differ between runs merged into one ensemble (besides ``run.*``)
MERGE_IGNORES = frozenset({
    "train.seed", "train.device", "train.num_threads", "train.eval_batch_size",
    "train.keep_last", "train.sync_every_steps", "train.num_workers", "train.pin_memory",
    "train.persistent_workers", "train.lm_cache", "train.lm_cache_dir"})


def merge_runs(runs: Sequence[TrainedRun]) -> TrainedRun:
    """One ensemble of the members of several runs of the same experiment (e.g. seeds trained
    in separate runs, on separate machines): their configs must be equal except the ``run``
    section, the seed and the settings that change where and how fast a run trains, not what
    it learns (:data:`MERGE_IGNORES`), and their data records must name the same data, split
    and features.

    Raises:
        RunIncompatibleError: fewer than one run, an exported model among them, or runs that
            differ in their config or data (the message names the first difference).
    """
    from msakit.config import config_differences

    runs = list(runs)
    if not runs:
        raise RunIncompatibleError("no run to merge")
    first = runs[0]
    if len(runs) == 1:
        return first
    for run in runs:
        if run.states is not None:
            raise RunIncompatibleError(f"{run.run_dir}: an exported model cannot be merged; "
                                       "merge the run folders it was exported from")

    def comparable(run: TrainedRun) -> dict:
        tree = run.config.to_dict()
        tree.pop("run", None)
        return tree

    data_keys = ("source", "dataset", "partitions", "feature_dims", "extractor")
    for run in runs[1:]:
        differing = [d for d in config_differences(comparable(first), comparable(run))
                     if d[0] not in MERGE_IGNORES]
        if differing:
            key, theirs, ours = differing[0]
            raise RunIncompatibleError(
                f"{run.run_dir}: its config differs from {first.run_dir}'s in {key} "
                f"({ours!r} vs {theirs!r}); only runs of the same "
                "experiment (seeds) make one ensemble")
        for key in data_keys:
            if run.data_info.get(key) != first.data_info.get(key):
                raise RunIncompatibleError(
                    f"{run.run_dir}: its data record differs from {first.run_dir}'s in {key!r}; "
                    "only runs on the same data make one ensemble")
    return TrainedRun(run_dir=first.run_dir, config=first.config, data_info=first.data_info,
                      extractor=first.extractor, normalization=first.normalization,
                      checkpoints=[c for run in runs for c in run.checkpoints],
                      label_range=first.label_range, notes=first.notes)


def check_feature_source(where: Path, data_info: dict, require: bool = False,
                         reads: Sequence[str] = ("audio", "vision"),
                         ) -> tuple[ExtractorConfig | None, dict | None, list[str]]:
    """The extractor config and normalisation new clips' features must be made with.

    A text-only model needs none (``(None, None, [])``). A model reading audio/vision features
    that ``msakit extract`` made gets that extractor's config; one trained on other features
    (MMSA's COVAREP/FACET, CMU-SDK pickles) gets ``(None, None, [])``: it serves precomputed
    features only (:data:`SERVES_FEATURES`), or with ``require=True`` it is an error.

    Args:
        reads: the modalities the model reads (see :attr:`TrainedRun.modalities`).

    Raises:
        RunIncompatibleError: ``require`` and features msakit cannot compute, or an extractor
            record this msakit cannot reproduce.
    """
    run_dir = where
    record = data_info.get("extractor")
    source = data_info.get("source", "?")
    dims = data_info.get("feature_dims") or {}
    if not any(int(dims.get(m, 0) or 0) for m in ("audio", "vision") if m in reads):
        return None, None, []
    if record is None and not require:
        return None, None, []
    if record is None:
        raise RunIncompatibleError(
            f"{run_dir} was trained on {source}, whose features were not computed by "
            "`msakit extract` (e.g. MMSA/CMU-SDK pickles with COVAREP, Facet or OpenFace "
            "features). msakit cannot compute those features for new clips, and a model fed "
            "any other features would output meaningless scores. To predict from raw clips, "
            "extract your training clips with `msakit extract FOLDER -o train.pkl`, train on "
            "that pickle, and predict with the new run."
        )
    if not isinstance(record, dict) or record.get("tool") != TOOL_NAME:
        tool = record.get("tool") if isinstance(record, dict) else type(record).__name__
        raise RunIncompatibleError(
            f"{run_dir}: its training features come from extractor {tool!r}, not from "
            f"{TOOL_NAME!r}; msakit predict can only recompute features it made itself"
        )
    try:
        extractor = ExtractorConfig.model_validate(record.get("config", {}))
    except ValueError as err:
        raise RunIncompatibleError(
            f"{run_dir}: the recorded extractor config is not one this msakit can reproduce "
            f"({err}); re-extract the training data and retrain"
        ) from err
    trained_dims = data_info.get("feature_dims") or {}
    recorded_dims = record.get("feature_dims") or {}
    for modality in ("audio", "vision"):
        used = int(trained_dims.get(modality, 0) or 0)
        if used and recorded_dims.get(modality) not in (None, used):
            raise RunIncompatibleError(
                f"{run_dir}: the model takes {used}-d {modality} features but its extractor "
                f"record says {recorded_dims.get(modality)}-d; the run folder is inconsistent"
            )
    notes = []
    from msakit.extract.writer import library_versions

    now = library_versions()
    for name, version in (record.get("library_versions") or {}).items():
        if name != "msakit" and version and now.get(name) and now[name] != version:
            notes.append(f"{name} is {now[name]} here but the training features were made with "
                         f"{version}; features may differ slightly")
    return extractor, record.get("normalization"), notes


def polarity_of(score: float) -> str:
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def seven_class(score: float, label_range: tuple[float, float]) -> int:
    """Rounded score on the [-3, 3] scale (labels in [-1, 1], e.g. SIMS, are scaled by 3)."""
    high = max(abs(label_range[0]), abs(label_range[1]))
    return int(np.clip(np.round(score * 3.0 / high), -3, 3))


def predict_clips(
    clips: Sequence[str | Path],
    run: TrainedRun | str | Path,
    texts: Sequence[str | None] | None = None,
    asr: bool | None = None,
    strict: bool = False,
    device: str = "cpu",
) -> list[ClipPrediction]:
    """Predict the sentiment of media files with a trained model.

    Args:
        clips: media files (video or audio).
        run: a :class:`TrainedRun` (also what :func:`msakit.from_pretrained` returns) or a run
            folder.
        texts: one transcript per clip (``None`` entries: ``<clip>.txt`` beside it, then ASR).
        asr: transcribe clips without a transcript (default: as the training extraction did;
            for a text-only model, on).
        strict: refuse clips without a video track or a face instead of warning.

    Raises:
        RunIncompatibleError, ExtractionError: with the reason, naming the run or clip.
    """
    if not isinstance(run, TrainedRun):
        run = load_trained_run(run)
    clips = [Path(c) for c in _as_list(clips)]
    if isinstance(texts, str):
        texts = [texts]
    if not clips:
        raise ValueError("no clip given")
    texts = list(texts) if texts is not None else [None] * len(clips)
    if len(texts) != len(clips):
        raise ValueError(f"{len(texts)} transcript(s) for {len(clips)} clip(s): give one --text "
                         "per clip, in order, or none")
    if run.text_only:
        return _predict_text_only_clips(clips, run, texts, asr, device)
    if run.serves == SERVES_FEATURES:
        raise RunIncompatibleError(features_only_message(run))

    from msakit.extract.features import ClipFeatureExtractor, finalize_clip

    modalities = run.modalities
    extractor_config = run.extractor
    if asr is not None:
        extractor_config = extractor_config.model_copy(
            update={"text": extractor_config.text.model_copy(update={"asr": asr})})
    extractor = ClipFeatureExtractor(extractor_config, strict=strict)

    extracted = []
    for clip, text in zip(clips, texts):
        features = extractor.extract(clip, text, "given", where=str(clip),
                                     require_text="text" in modalities)
        audio, vision = finalize_clip(features.audio, features.vision, run.extractor,
                                      run.normalization)
        for modality, values in (("audio", audio), ("vision", vision)):
            expected = run.feature_dims[modality]
            if expected and values.shape[1] != expected:
                raise RunIncompatibleError(
                    f"{clip}: this installation computes {values.shape[1]}-d {modality} "
                    f"features with the run's extractor config, but the model takes "
                    f"{expected}-d ones (library versions at training: "
                    f"{run.data_info['extractor'].get('library_versions')}); install those "
                    "versions or re-extract and retrain"
                )
        extracted.append((features, audio, vision))

    scores, spread, contributions = _score(
        run, [f.text or "." for f, _, _ in extracted], [a for _, a, _ in extracted],
        [v for _, _, v in extracted], [c.stem for c in clips], device)
    return [
        _prediction(run, str(clip), features.text, features.text_source, scores[i], spread[i],
                    contributions[i], features.info, list(features.warnings))
        for i, (clip, (features, _, _)) in enumerate(zip(clips, extracted))
    ]


def predict_texts(texts: Sequence[str], run: TrainedRun | str | Path,
                  device: str = "cpu") -> list[ClipPrediction]:
    """Predict the sentiment of transcripts alone (no media) with a text-only model.

    Raises:
        RunIncompatibleError: the model also reads audio or vision.
        ValueError: no text, or an empty one.
    """
    if not isinstance(run, TrainedRun):
        run = load_trained_run(run)
    texts = [str(t) for t in _as_list(texts)]  # one string is one transcript
    if not texts:
        raise ValueError("no text given")
    for i, text in enumerate(texts, 1):
        if not text.strip():
            raise ValueError(f"text {i} is empty")
    if not run.text_only:
        also = ", ".join(m for m, d in run.feature_dims.items() if d)
        what = ("their precomputed feature files (.npz, --features)"
                if run.serves == SERVES_FEATURES else "the clips (media files)")
        raise RunIncompatibleError(
            f"{run.run_dir}: this model also reads {also} features; give {what} as well as "
            "the transcripts")
    scores, spread, contributions = _score(run, texts, None, None,
                                           [f"text{i}" for i in range(len(texts))], device)
    context = getattr(run.config.model, "text_context", None)
    alone = ([f"scored without context: the model reads {context} neighbouring utterances; "
              "give a video's utterances together (predict_utterances, --texts FILE.csv)"]
             if context is not None and context.mode != "none" else [])
    return [_prediction(run, None, text.strip(), "given", scores[i], spread[i],
                        contributions[i], {}, list(alone))
            for i, text in enumerate(texts)]


def features_only_message(run: TrainedRun) -> str:
    """Why a model that serves precomputed features cannot score a media file."""
    dims = ", ".join(f"{d}-d {m}" for m, d in run.feature_dims.items() if d)
    source = run.data_info.get("source")
    trained_on = f" (trained on {source})" if source and source != str(run.run_dir) else ""
    return (f"{run.run_dir}: this model{trained_on} reads {dims} features that msakit cannot "
            "compute from a raw clip (e.g. MMSA's COVAREP/FACET), so it scores only "
            f"precomputed features: give one {FEATURE_FILE_SUFFIX} file per clip with "
            "--features (arrays 'audio' (L, D_audio), 'vision' (L, D_vision), optional "
            "'text'/'words'). To score raw clips, extract your training clips with `msakit "
            "extract FOLDER -o train.pkl`, train on that pickle, and predict with the new run")


def _as_list(value) -> list:
    return [value] if isinstance(value, (str, Path)) else list(value)


def load_feature_file(path: str | Path, run: TrainedRun
                      ) -> tuple[np.ndarray | None, np.ndarray | None, list[str] | None,
                                 str | None]:
    """Read one clip's precomputed features, checked against what ``run`` reads.

    The file is a NumPy ``.npz`` (``numpy.savez``, no pickled objects) with:

    * ``audio``: ``(L_a, D_audio)`` float, and ``vision``: ``(L_v, D_vision)`` float — for each
      modality the model reads, with the feature sizes of its ``feature_spec.json``
      (``feature_dims``), made exactly as the training data's were (same extractor, same
      normalisation);
    * ``words`` (optional; required for a word-aligned model): ``(L,)`` strings, one per row,
      ``L_a == L_v == L``;
    * ``text`` (optional): the transcript, a 0-d string (else the words joined, else ``--text``).

    Returns:
        ``(audio, vision, words, text)``, absent ones ``None``.

    Raises:
        RunIncompatibleError: unreadable file, a missing or extra array, wrong shape or size,
            non-finite values; the message names the file and the array.
    """
    path = Path(path)
    if path.suffix.lower() != FEATURE_FILE_SUFFIX:
        raise RunIncompatibleError(f"{path}: a feature file must be a NumPy {FEATURE_FILE_SUFFIX} "
                                   f"(arrays {', '.join(FEATURE_FILE_KEYS)})")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError) as err:
        raise RunIncompatibleError(f"{path}: unreadable {FEATURE_FILE_SUFFIX} ({err})") from err
    unknown = sorted(set(arrays) - set(FEATURE_FILE_KEYS))
    if unknown:
        raise RunIncompatibleError(f"{path}: unknown array(s) {unknown}; expected "
                                   f"{', '.join(FEATURE_FILE_KEYS)}")
    found: dict[str, np.ndarray | None] = {}
    for modality, dim in run.feature_dims.items():
        if not dim:
            found[modality] = None
            continue
        if modality not in arrays:
            raise RunIncompatibleError(f"{path}: no array {modality!r}; the model reads "
                                       f"({'L'}, {dim}) {modality} features")
        values = arrays[modality]
        if values.ndim != 2 or values.shape[1] != dim or values.shape[0] < 1 \
                or not np.issubdtype(values.dtype, np.number):
            raise RunIncompatibleError(f"{path}: array {modality!r} is {values.dtype} "
                                       f"{tuple(values.shape)}; expected (L, {dim}) numbers "
                                       "with L >= 1")
        if not np.isfinite(values).all():
            raise RunIncompatibleError(f"{path}: array {modality!r} has NaN or infinite values")
        found[modality] = values.astype(np.float32)
    lengths = {v.shape[0] for v in found.values() if v is not None}
    words = None
    if "words" in arrays:
        words = [str(w) for w in np.asarray(arrays["words"]).reshape(-1)]
        if lengths and lengths != {len(words)}:
            raise RunIncompatibleError(f"{path}: {len(words)} words but feature rows "
                                       f"{sorted(lengths)}; one word per row")
    word_aligned = bool(run.data_info.get("word_aligned", False))
    if word_aligned and words is None:
        raise RunIncompatibleError(f"{path}: the model is word-aligned (one feature row per "
                                   "transcript word): add the array 'words', one per row")
    text = None
    if "text" in arrays:
        text = str(np.asarray(arrays["text"]).reshape(-1)[0]) if arrays["text"].size else ""
    return found["audio"], found["vision"], words if word_aligned else None, text


def predict_features(files: Sequence[str | Path], run: TrainedRun | str | Path,
                     texts: Sequence[str | None] | None = None,
                     device: str = "cpu") -> list[ClipPrediction]:
    """Predict from precomputed feature files (:func:`load_feature_file`), one per clip.

    The way to use a model that serves ``features`` (trained on MMSA/CMU-SDK features); any
    model that reads audio/vision accepts them.

    Args:
        texts: one transcript per file (``None`` entries: the file's ``text``, else its
            ``words`` joined).

    Raises:
        RunIncompatibleError: a text-only model, or a file that does not fit the model.
        ValueError: no file, or texts that do not pair with the files.
    """
    if not isinstance(run, TrainedRun):
        run = load_trained_run(run)
    files = [Path(f) for f in _as_list(files)]
    if isinstance(texts, str):
        texts = [texts]
    if not files:
        raise ValueError("no feature file given")
    if run.text_only:
        raise RunIncompatibleError(f"{run.run_dir}: a text-only model reads no audio/vision "
                                   "features; give the transcripts (--text)")
    texts = list(texts) if texts is not None else [None] * len(files)
    if len(texts) != len(files):
        raise ValueError(f"{len(texts)} transcript(s) for {len(files)} feature file(s): give "
                         "one --text per file, in order, or none")
    audio, vision, words, transcripts = [], [], [], []
    for path, given in zip(files, texts):
        a, v, w, text = load_feature_file(path, run)
        text = given if given and given.strip() else text
        if not (text and text.strip()) and w:
            text = " ".join(w)
        if "text" in run.modalities and not (text and text.strip()):
            raise RunIncompatibleError(f"{path}: no transcript: give --text, or store 'text' "
                                       "(or 'words') in the file")
        audio.append(a)
        vision.append(v)
        words.append(w)
        transcripts.append((text or ".").strip())
    dims = run.feature_dims
    scores, spread, contributions = _score(
        run, transcripts, audio if dims["audio"] else None, vision if dims["vision"] else None,
        [f.stem for f in files], device,
        words=words if run.data_info.get("word_aligned") else None)
    return [_prediction(run, str(path), transcripts[i], "given", scores[i], spread[i],
                        contributions[i], {"features": path.name}, [])
            for i, path in enumerate(files)]
@dataclass(frozen=True)
class Utterance:
    """One row of a transcript table (``msakit predict --texts FILE.csv``): a clip of a video.

    The order of a video's utterances in the table is their order in the video."""

    video_id: str
    clip_id: str
    text: str


def read_utterances(path: str | Path) -> list[Utterance]:
    """A CSV with columns ``video_id, clip_id, text`` (more columns are ignored, labels never
    read), one row per clip, each video's clips in order.

    Raises:
        ValueError: unreadable file, missing column, empty cell, or a clip id twice in a video;
            the message names the file and line.
    """
    from msakit.data.csv_table import read_table

    path = Path(path)
    try:
        _, rows = read_table(path, ("video_id", "clip_id", "text"))
    except OSError as err:
        raise ValueError(f"{path}: unreadable ({err})") from None
    utterances, seen = [], set()
    for line, row in rows:
        for column in ("video_id", "clip_id", "text"):
            if not row[column].strip():
                raise ValueError(f"{path}: line {line}: empty {column}")
        key = (row["video_id"].strip(), row["clip_id"].strip())
        if key in seen:
            raise ValueError(f"{path}: line {line}: clip {key[1]!r} of video {key[0]!r} "
                             "appears twice")
        seen.add(key)
        utterances.append(Utterance(key[0], key[1], row["text"].strip()))
    if not utterances:
        raise ValueError(f"{path}: no rows")
    return utterances


def predict_utterances(utterances: Sequence[Utterance | str], run: TrainedRun | str | Path,
                       device: str = "cpu") -> list[ClipPrediction]:
    """Score transcripts that belong to videos, each with its video's neighbouring utterances
    when the model reads text context (``model.text_context``; see :mod:`msakit.data.context`).

    ``utterances``: :class:`Utterance` rows (each video's clips in order; videos may be
    interleaved), or plain strings: the utterances of one video, in order. Each result's
    ``info`` has ``video_id``, ``clip_id`` and ``context`` (the mode and how many previous /
    next utterances were read); a clip read without any neighbour says so in ``warnings``.
    Results come in the input order.

    Raises:
        RunIncompatibleError: the model also reads audio or vision.
        ValueError: no utterance, or an empty one.
    """
    from msakit.data.context import TextContext, find_neighbours

    if not isinstance(run, TrainedRun):
        run = load_trained_run(run)
    rows = [u if isinstance(u, Utterance) else Utterance("video", str(i + 1), str(u))
            for i, u in enumerate(utterances)]
    if not rows:
        raise ValueError("no utterance given")
    for i, row in enumerate(rows, 1):
        if not row.text.strip():
            raise ValueError(f"utterance {i} ({row.video_id}/{row.clip_id}) is empty")
    if not run.text_only:
        raise RunIncompatibleError(
            f"{run.run_dir}: this model also reads audio or vision features; predict clips "
            "(media files) instead")
    context = TextContext.parse(getattr(run.config.model, "text_context", None))
    texts = [row.text.strip() for row in rows]
    video_ids = [row.video_id for row in rows]
    counts: dict[str, int] = {}
    positions = []  # the table's order within each video
    for video in video_ids:
        counts[video] = counts.get(video, 0) + 1
        positions.append(counts[video])
    scores, spread, contributions = _score(
        run, texts, None, None, [f"{i}" for i in range(len(rows))], device,
        video_ids=video_ids, positions=positions)
    from msakit.data import Split

    split = Split(ids=[str(i) for i in range(len(rows))], video_ids=video_ids, texts=texts,
                  labels=np.zeros(len(rows), dtype=np.float32), positions=positions)
    neighbours = find_neighbours(split, context) if context.enabled else None
    results = []
    for i, row in enumerate(rows):
        used = {"previous": 0, "next": 0} if neighbours is None else {
            "previous": len(neighbours.previous[i]), "next": len(neighbours.next[i])}
        warnings = []
        if not context.enabled:
            warnings.append("this model reads each utterance alone (model.text_context none)")
        elif not used["previous"] and not used["next"]:
            warnings.append(f"no neighbouring utterance of video {row.video_id!r}: scored "
                            f"without context (the model reads {context})")
        info = {"video_id": row.video_id, "clip_id": row.clip_id,
                "context": {"mode": str(context), **used}}
        results.append(_prediction(run, None, texts[i], "given", scores[i], spread[i],
                                   contributions[i], info, warnings))
    return results


def _predict_text_only_clips(clips: list[Path], run: TrainedRun, texts: list[str | None],
                             asr: bool | None, device: str) -> list[ClipPrediction]:
    """A text-only model on media files: each clip is decoded (so a broken file is an error),
    its transcript is the given one, ``<clip>.txt``, or pocketsphinx's (``low_quality``)."""
    from msakit.extract.media import SAMPLE_RATE, ExtractionError, decode_audio, probe
    from msakit.extract.text import ASR_NOTE, sidecar_transcript, transcribe

    transcripts, sources, infos, warnings = [], [], [], []
    for clip, text in zip(clips, texts):
        where = str(clip)
        info = probe(clip)
        samples = decode_audio(clip)
        notes = ["text-only model: the clip's audio and video do not change the score"]
        source = "given"
        if text is None or not text.strip():
            text, source = sidecar_transcript(clip), "txt"
        if text is None:
            if asr is False:
                raise ExtractionError(
                    f"{where}: no transcript: none given (--text), no {clip.stem}.txt beside the "
                    "clip, and speech recognition is off (--no-asr)", "text")
            text, source = transcribe(samples, where), "asr"
            notes.insert(0, ASR_NOTE + ": low-quality prediction")
        transcripts.append(text.strip())
        sources.append(source)
        infos.append({"duration_s": round(samples.size / SAMPLE_RATE, 3),
                      "has_video": bool(info.has_video)})
        warnings.append(notes)
    scores, spread, contributions = _score(run, transcripts, None, None,
                                           [c.stem for c in clips], device)
    return [_prediction(run, str(clip), transcripts[i], sources[i], scores[i], spread[i],
                        contributions[i], infos[i], warnings[i])
            for i, clip in enumerate(clips)]


def _score(run: TrainedRun, texts: list[str], audio: list[np.ndarray] | None,
           vision: list[np.ndarray] | None, names: list[str], device: str,
           words: list[list[str]] | None = None, video_ids: list[str] | None = None,
           positions: list[int] | None = None):
    """Every member's prediction on one batch; returns per-sample mean, spread over members
    and contributions (the models' per-sample extras averaged over members).

    ``words``: one word per audio/vision row of each clip, for a word-aligned model.
    ``video_ids`` / ``positions``: the clips' videos and places in them, for a model that reads
    text context; without them every clip is its own video (no neighbours)."""
    import torch
    from transformers.utils import logging as hf_logging

    from msakit.data import Split, make_loader
    from msakit.lm import load_tokenizer

    hf_logging.disable_progress_bar()  # a weight-loading bar per checkpoint is noise here
    config = run.config
    n = len(texts)
    split = Split(
        ids=[f"predict$_${name}" for name in names],
        video_ids=video_ids or [f"predict{i}" for i in range(n)], texts=texts,
        labels=np.zeros(n, dtype=np.float32), audio=audio, vision=vision, words=words,
        positions=positions or [1] * n,
    )
    loader = make_loader(split, load_tokenizer(config.model.language_model), batch_size=n,
                         shuffle=False, max_text_tokens=config.data.max_text_tokens,
                         modalities=run.modalities, word_aligned=words is not None,
                         text_context=getattr(config.model, "text_context", None))
    batch = next(iter(loader))
    for key in [k for k in batch if k == "labels" or k.startswith("labels_")]:
        del batch[key]  # no labels: models skip their losses
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    scores, extras_runs = [], []
    for model in run.models(device):
        with torch.no_grad():
            output = model(batch)
        scores.append(output.prediction.detach().float().cpu().reshape(-1).numpy())
        extras_runs.append({
            name: value.detach().float().cpu().numpy() for name, value in output.extras.items()
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n
            and _is_contribution(name)
        })
    scores_array = np.stack(scores)  # (members, samples)
    shared = set.intersection(*(set(e) for e in extras_runs)) if extras_runs else set()
    contributions = [
        {name: np.round(np.mean([e[name][i] for e in extras_runs], axis=0), 6).tolist()
         for name in sorted(shared)}
        for i in range(n)
    ]
    return scores_array.mean(0), scores_array.std(0), contributions


def _prediction(run: TrainedRun, clip: str | None, text: str, text_source: str, score: float,
                spread: float, contributions: dict, info: dict,
                warnings: list[str]) -> ClipPrediction:
    score = float(score)
    class7 = seven_class(score, run.label_range)
    modalities = run.modalities
    return ClipPrediction(
        clip=clip, text=text, text_source=text_source, score=round(score, 6),
        score_std=round(float(spread), 6), polarity=polarity_of(score), class7=class7,
        class7_name=SEVEN_CLASSES[class7], contributions=contributions,
        checkpoints=run.members, info=info, warnings=warnings + run.notes,
        modalities=modalities, low_quality=text_source == "asr",
    )
