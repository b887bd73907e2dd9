"""msakit vs MMSA on the same MMSA pickle: every model both toolkits have, MMSA's hyper-parameters.

    pip install --no-deps --target DIR MMSA==2.2.1 easydict nvidia-ml-py3   # benchmark only
    PYTHONPATH=src:DIR python benchmarks/vs_mmsa.py [--models tfn misa ...] [--epochs 3]
        [--mmsa-src thuiar-MMSA-checkout/src] [--mmsa-transformers TF4_DIR]
        [--accuracy [--seeds 1 2 3]] [--kernels OPERATOR ... --epochs 4]

Which models: data-driven. The rows of the ``mmsa`` suite (``msakit suite show mmsa``) whose model
is registered in this msakit and has a regression config in MMSA (``config_regression.json`` of
the MMSA that is imported: the pip package, or a checkout's ``src`` with ``--mmsa-src``), so a
model added to msakit later is benchmarked without editing this file. Each runs on the first of
its suite presets' datasets (MOSI first) that MMSA has settings for: msakit with that preset (the
mmsa suite's presets hold MMSA's hyper-parameters, or the authors' where MMSA took them over;
``MMSA_SETTINGS`` below gives MMSA's own where they differ) and MMSA with its own
``config_regression.json`` entry; both with MMSA's batch size (``BATCH_SIZES``'s where MMSA's
leaves no optimiser step on the 147 clips), so that their steps are the same.

The data: an MMSA-layout pickle built from the 229 real MOSI clips (``word_aligned_valid.pkl``:
COVAREP audio and Facet vision, one step per word; split by video into about 145/32/52 clips;
``text_bert`` token ids from the packaged MiniLM tokenizer, 50 tokens; ``text``: the packaged
MiniLM's last hidden states of those tokens, what MMSA's non-BERT models read (msakit computes
the same states with the frozen LM and reads them from its on-disk cache, filled before the timed
passes); audio and vision aligned to the tokens as in MMSA's ``aligned_50`` files, with their
lengths; regression labels, and for MMSA's SIMS-only multi-task models (MLF-DNN, MLMF) the
unimodal labels ``_T/_A/_V`` set to the clip's label, every label divided by 3 to CH-SIMS's
range [-1, 1]). Seeds the same for both.

Each run is its own child process with one CPU thread, one after the other: ``--epochs`` passes
over the training split, the checkpoint of the lowest validation loss, then the test split scored
``--test-repeats`` times with it. Printed side by side, with msakit / MMSA ratios: ms per
training step (median pass time / batches per pass; MMIM: one batch of its MMILB stage and one of
its main pass), s per test pass (median), peak RSS; the same medians of the process's CPU time
(on a machine shared with other jobs they move far less with the load than wall times; each
run's load average is in ``--results``); with ``--accuracy`` the test metrics, mean ± std over
the seeds (default then 1 2 3). ``--kernels OPERATOR ...`` profiles each run's last training
epoch and prints the time both spend in those operators (e.g. ``aten::mkldnn_rnn_layer``, the
LSTM kernel both run) and the floor it sets on the step ratio: msakit's time in them over MMSA's
whole step, what the ratio would be if everything else took no time.

msakit runs with its defaults, among them ``train.host_allocator=keep`` (glibc's malloc keeps
freed memory: no page faults for the large tensors each step allocates again), MMSA as it runs.
``--msakit-set KEY=VALUE`` adds overrides to every msakit run (``train.host_allocator=system``:
malloc's own settings); ``--mmsa-host-allocator keep`` gives the MMSA runs the same malloc
settings, for a comparison of the two codes in the same environment.

MMSA cannot run on this machine as shipped; these calls are patched at run time, nothing of its
code is copied: the language model (``bert-base-uncased`` from the hub) becomes the packaged
MiniLM (a BertModel with 384-d states): MMSA's ``feature_dims[0]`` of a BERT model is set to 384
and ``text_out: 768`` becomes 384; MISA's hard-coded 768-d text projection is rebuilt for 384
(``MMSA_MODEL_PATCHES``); the device is the CPU (its ``MMSA_run`` entry point is not used, the data
loader, model and trainer are built directly). A checkout newer than 2.2.1 imports
``pytorch_transformers`` (CENET): it is mapped to ``transformers`` if missing; MulT's trainer
passes ``verbose=`` to ``ReduceLROnPlateau``, which newer torch no longer takes: it is dropped.
BERT_MAG and TFR_NET load a hard-coded ``bert-base-uncased``: pointed at the MiniLM
(``MMSA_BUILD_PATCHES``); BERT_MAG's ``MAG_BertModel`` needs transformers 4.x
(``--mmsa-transformers DIR``, first on the path of that MMSA run only); TFR-Net runs at the
pickle's lengths on both sides (``SEQUENCE_LENGTH_MODELS``).
MMSA trains until early stopping; to give both toolkits the same budget its training loader
stops the run after ``--epochs`` passes, and the checkpoint it saved as best is then tested.
A model that fails on either side is reported with its error; the others still run.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import TimedPasses

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mosi" / "word_aligned_valid.pkl"
METRICS = {"mosi": ("Has0_acc_2", "Non0_acc_2", "Mult_acc_7", "MAE", "Corr"),
           "sims": ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "MAE", "Corr")}
TEXT_TOKENS = 50
LANGUAGE_MODEL = "all-MiniLM-L6-v2"
LM_HIDDEN = 384

#: Models whose suite preset follows the authors' repository rather than MMSA (MISA:
#: declare-lab/MISA; Self-MM: thuiar/Self-MM): msakit runs its class defaults with these
#: overrides, MMSA's MOSI values (config_regression.json). The batch size is MMSA's (or ``BATCH_SIZES``'s).
MMSA_SETTINGS = {
    "misa": ["model.dropout=0.2", "model.loss_weights.diff=0.1", "model.loss_weights.cmd=0.3",
             "model.loss_weights.recon=1.0", "train.grad_accumulation=2", "train.lr=1e-4",
             "train.lm_lr=1e-4", "train.grad_clip_value=0.8", "train.patience=8"],
    "self_mm": ["model.post_fusion_dropout=0.0", "model.post_text_dropout=0.1",
                "model.post_audio_dropout=0.1", "model.post_vision_dropout=0.0",
                "model.post_text_dim=32", "model.audio_lstm_hidden=16",
                "model.vision_lstm_hidden=32", "train.grad_accumulation=4", "train.lr=1e-3",
                "train.lm_lr=5e-5", "train.weight_decay=1e-3", "train.lm_weight_decay=1e-3",
                "train.patience=8"],
}


# ----------------------------------------------------------------------------------------------
# Which models: the mmsa suite's rows that both toolkits have
# ----------------------------------------------------------------------------------------------

def mmsa_configs() -> dict:
    """MMSA's ``config_regression.json`` (model -> commonParams / datasetParams), read without
    importing MMSA."""
    spec = importlib.util.find_spec("MMSA")
    if spec is None or spec.origin is None:
        sys.exit("MMSA is not importable: pip install --no-deps --target DIR MMSA==2.2.1 "
                 "easydict nvidia-ml-py3 and put DIR on PYTHONPATH (benchmark only), or pass "
                 "--mmsa-src CHECKOUT/src")
    path = Path(spec.origin).parent / "config" / "config_regression.json"
    return json.loads(path.read_text())


def comparable_models(configs: dict, wanted: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """``[{model, dataset, preset, batch_size}]`` of the mmsa suite's rows that msakit registers
    and MMSA configures, and why each other registered row is left out."""
    from msakit.experiments.suites import load_suite
    from msakit.models import list_models

    registered = set(list_models())
    chosen, left_out = [], []
    for row in load_suite("mmsa").rows:
        if row.model is None or row.model not in registered:
            continue
        if wanted and row.model not in wanted:
            continue
        if row.model not in configs:
            left_out.append(f"{row.model} (not in this MMSA's config_regression.json)")
            continue
        params = configs[row.model]["datasetParams"]
        datasets = sorted(row.presets, key=lambda d: d != "mosi")
        dataset = next((d for d in datasets if d in params), None)
        if dataset is None:
            left_out.append(f"{row.model} (no preset for a dataset MMSA configures it for)")
            continue
        merged = {**configs[row.model]["commonParams"], **params[dataset]}
        chosen.append({"model": row.model, "dataset": dataset,
                       "preset": None if row.model in MMSA_SETTINGS else row.presets[dataset],
                       "batch_size": BATCH_SIZES.get(row.model, int(merged["batch_size"]))})
    missing = sorted(set(wanted or []) - {c["model"] for c in chosen}
                     - {m.split(" ")[0] for m in left_out})
    left_out += [f"{m} (not a registered model of the mmsa suite)" for m in missing]
    return chosen, left_out


# ----------------------------------------------------------------------------------------------
# The shared MMSA-layout pickle
# ----------------------------------------------------------------------------------------------

def _lm_states(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The packaged MiniLM's last hidden states (N, L, 384) of token ids, padding zeroed."""
    import torch
    from transformers import AutoModel

    from msakit.lm import resolve_language_model

    lm = AutoModel.from_pretrained(resolve_language_model(LANGUAGE_MODEL)).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(input_ids), 64):
            ids = torch.as_tensor(input_ids[start:start + 64], dtype=torch.long)
            m = torch.as_tensor(mask[start:start + 64], dtype=torch.long)
            out.append((lm(input_ids=ids, attention_mask=m).last_hidden_state
                        * m.unsqueeze(-1)).numpy())
    return np.concatenate(out).astype(np.float32)


def build_pickle(source: Path, output: Path, label_scale: float = 1.0) -> dict[str, int]:
    """Write the 229 clips in MMSA's layout, split by video (about 145/32/52 clips), labels
    times ``label_scale`` (1/3 for SIMS settings: CH-SIMS's labels are in [-1, 1])."""
    from msakit.data import load_dataset
    from msakit.data.text import expand_to_tokens, tokenize_words
    from msakit.lm import load_tokenizer

    split = load_dataset(source).split("all")
    tokenizer = load_tokenizer(LANGUAGE_MODEL)
    by_video: dict[str, list[int]] = {}
    for row, video in enumerate(split.video_ids):
        by_video.setdefault(video, []).append(row)
    targets = {"test": 52, "valid": 32}

    def assign(seed: int) -> dict[str, list[int]]:
        videos = sorted(by_video)
        np.random.default_rng(seed).shuffle(videos)
        parts: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
        for video in videos:
            name = next((n for n in ("test", "valid")
                         if len(parts[n]) + len(by_video[video]) <= targets[n]), "train")
            parts[name].extend(by_video[video])
        return parts

    # the first of 100 seeded video orders whose split is closest to 145/32/52 clips, without a
    # training batch of one clip (145 = 9 x 16 + 1): its central moments are all zero and the
    # sqrt in MMSA's CMD back-propagates NaN into MISA's weights
    parts = min((assign(seed) for seed in range(100)),
                key=lambda p: (len(p["train"]) % 16 == 1,
                               sum(abs(len(p[n]) - t) for n, t in targets.items())))
    payload = {}
    for name, rows in parts.items():
        n = len(rows)
        text_bert = np.zeros((n, 3, TEXT_TOKENS), dtype=np.float32)
        audio = np.zeros((n, TEXT_TOKENS, split.audio[0].shape[1]), dtype=np.float32)
        vision = np.zeros((n, TEXT_TOKENS, split.vision[0].shape[1]), dtype=np.float32)
        lengths = np.zeros(n, dtype=np.int64)
        for k, row in enumerate(rows):
            # aligned to the tokens as MMSA's aligned_50 files: each sub-word gets its word's
            # audio/vision row, special tokens zero rows (MMSA's MISA runs its audio/vision
            # LSTMs over the text's token count)
            tokens = tokenize_words(tokenizer, split.words[row], TEXT_TOKENS)
            length = len(tokens)
            text_bert[k, 0, :length] = tokens.input_ids
            text_bert[k, 1, :length] = 1
            text_bert[k, 2, :length] = tokens.token_type_ids
            audio[k, :length] = expand_to_tokens(split.audio[row], tokens.word_index)
            vision[k, :length] = expand_to_tokens(split.vision[row], tokens.word_index)
            lengths[k] = length
        labels = label_scale * np.asarray([split.labels[i] for i in rows], dtype=np.float32)
        payload[name] = {
            "id": np.asarray([split.ids[i] for i in rows]),
            "raw_text": np.asarray([split.texts[i] for i in rows]),
            "text_bert": text_bert,
            "text": _lm_states(text_bert[:, 0], text_bert[:, 1]),
            "audio": audio,
            "vision": vision,
            "audio_lengths": lengths,
            "vision_lengths": lengths.copy(),
            "regression_labels": labels,
            # read only by MMSA's SIMS settings (MLF-DNN, MLMF): the clip's label
            **{f"regression_labels_{m}": labels.copy() for m in "TAV"},
            "classification_labels": np.sign(labels).astype(np.float32) + 1,
            "annotations": np.asarray(["Neutral"] * n),
        }
    with output.open("wb") as handle:
        pickle.dump(payload, handle)
    return {name: len(rows) for name, rows in parts.items()}


# ----------------------------------------------------------------------------------------------
# Workers (one child process per run)
# ----------------------------------------------------------------------------------------------

class BudgetReached(Exception):
    """Raised by :class:`TimedTrainLoader` when MMSA asks for one epoch more than the budget."""


class TimedTrainLoader(TimedPasses):
    """MMSA's training loader: times each full pass, stops the run after ``epochs`` passes."""

    def __init__(self, loader, epochs: int, untimed_passes: int = 0):
        super().__init__(loader)
        self.epochs, self.untimed = epochs, untimed_passes

    def __iter__(self):
        if self.untimed:  # e.g. Self-MM's label initialisation pass
            self.untimed -= 1
            yield from self.loader
            return
        if len(self.seconds) == self.epochs:
            raise BudgetReached
        yield from super().__iter__()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _misa_text_projection(model) -> None:
    """MMSA's MISA projects BERT's states with a hard-coded Linear(768, hidden)."""
    import torch

    inner = model.Model
    out_features = inner.project_t.project_t.out_features
    inner.project_t.project_t = torch.nn.Linear(LM_HIDDEN, out_features)


def _mctn_device(model) -> None:
    """MMSA's MCTN hard-codes ``'cuda'`` as the device of its ``Seq2Seq`` outputs."""
    inner = model.Model
    inner.seq2seq1.device = inner.seq2seq2.device = "cpu"


#: model -> a function applied to MMSA's built model where a 768 or the device is hard-coded
MMSA_MODEL_PATCHES = {"misa": _misa_text_projection, "mctn": _mctn_device}


def _bert_mag_language_model(args) -> None:
    """MMSA's BERT_MAG loads a hard-coded ``bert-base-uncased`` (``bert-base-chinese``) instead
    of ``args.pretrained``: its ``from_pretrained`` is pointed at ``args.pretrained``."""
    module = importlib.import_module("MMSA.models.singleTask.BERT_MAG")  # not the class
    classifier = module.MAG_BertForSequenceClassification
    original = classifier.from_pretrained.__func__

    def from_pretrained(cls, name, *rest, **kwargs):
        return original(cls, args["pretrained"], *rest, **kwargs)

    classifier.from_pretrained = classmethod(from_pretrained)


def _tfr_net_language_model(args) -> None:
    """MMSA's TFR_NET builds ``BertTextEncoder`` with its default ``bert-base-uncased``: the
    name in its module is given ``pretrained=args.pretrained``."""
    module = importlib.import_module("MMSA.models.missingTask.TFR_NET.model")
    module.BertTextEncoder = functools.partial(module.BertTextEncoder,
                                               pretrained=args["pretrained"])


def _mctn_output_width(args) -> None:
    """MMSA's MCTN pads every modality to ``output_dim``, 768 in its config (BERT-base's
    features): the pickle's text states are the packaged MiniLM's 384 wide."""
    args["output_dim"] = LM_HIDDEN


#: model -> a function applied to MMSA's arguments before its model is built
MMSA_BUILD_PATCHES = {"bert_mag": _bert_mag_language_model, "tfr_net": _tfr_net_language_model,
                      "mctn": _mctn_output_width}
#: models whose layers are sized by the sequence lengths (TFR-Net's temporal transformers):
#: both sides get the pickle's (aligned_50's) lengths, MMSA's aligned setting
#: (``datasetCommonParams`` ``aligned``: ``seq_lens`` [50, 50, 50]) instead of the unaligned one
SEQUENCE_LENGTH_MODELS = {"tfr_net"}
#: MMSA models whose code needs transformers 4.x (BERT_MAG's ``MAG_BertModel`` calls
#: ``get_head_mask``, which transformers 5 removed): ``--mmsa-transformers`` gives one
NEEDS_TRANSFORMERS_4 = {"bert_mag"}
#: MMSA trainers that pass over the training loader once before their epochs (label init)
UNTIMED_PASSES = {"self_mm": 1, "tetfn": 1}
#: MMSA trainers that pass over the training loader more than once per epoch (MMIM: the MMILB
#: stage, then the main pass); a "training step" is then one batch of every pass of an epoch
PASSES_PER_EPOCH = {"mmim": 2}
#: models whose MMSA batch size leaves the 147 training clips fewer batches than the optimiser
#: step needs (TETFN: batches of 64, the losses of 4 summed per step, an incomplete group
#: dropped: 3 batches, no step ever; msakit refuses such a run): both sides get this batch size
BATCH_SIZES = {"tetfn": 32}


def per_epoch(seconds: list[float], passes: int) -> list[float]:
    """The pass times summed per epoch (``passes`` consecutive passes each)."""
    return [sum(seconds[i:i + passes]) for i in range(0, len(seconds) - passes + 1, passes)]


def _map_pytorch_transformers() -> None:
    """A checkout newer than 2.2.1 imports the long-gone ``pytorch_transformers`` (CENET's
    module, imported by AMIO); a stand-in gives the names it uses: ``BertConfig`` and
    ``prune_linear_layer`` from ``transformers``, and a ``PreTrainedModel`` as
    pytorch_transformers 1.x has it (``transformers``' own no longer loads a model built the
    2019 way): it keeps the config, ``init_weights`` applies the subclass's ``_init_weights``,
    and ``from_pretrained(path, config=..., **kwargs)`` builds the model and loads the
    checkpoint's base-model weights (BERT) into ``base_model_prefix``; the new blocks (CENET's CE,
    its unused POS/sentiment/polarity embeddings, the head) keep their initialisation."""
    if "pytorch_transformers" in sys.modules or importlib.util.find_spec(
            "pytorch_transformers") is not None:
        return
    import torch
    import transformers
    from transformers import pytorch_utils

    class PreTrainedModel(torch.nn.Module):
        def __init__(self, config, *args, **kwargs):
            super().__init__()
            self.config = config

        def init_weights(self):
            self.apply(self._init_weights)

        @classmethod
        def from_pretrained(cls, path, *args, config=None, **kwargs):
            model = cls(config, *args, **kwargs)
            state = transformers.AutoModel.from_pretrained(path).state_dict()
            _, unexpected = getattr(model, cls.base_model_prefix).load_state_dict(
                state, strict=False)
            if unexpected:
                raise RuntimeError(f"{cls.__name__}: checkpoint weights {unexpected} unused")
            return model.eval()

    stub = types.ModuleType("pytorch_transformers")
    stub.BertConfig = transformers.BertConfig
    stub.BERT_PRETRAINED_MODEL_ARCHIVE_MAP = {}
    utils = types.ModuleType("pytorch_transformers.modeling_utils")
    utils.PreTrainedModel = PreTrainedModel
    utils.prune_linear_layer = pytorch_utils.prune_linear_layer
    stub.modeling_utils = utils
    sys.modules.update({"pytorch_transformers": stub, "pytorch_transformers.modeling_utils": utils})


def _drop_removed_scheduler_argument() -> None:
    """MMSA's MulT trainer passes ``verbose=`` to ``ReduceLROnPlateau``, which torch 2.7 removed;
    it only switched a print on. Its trainer module imports the class when first imported, so
    this runs before."""
    from torch.optim import lr_scheduler

    original = lr_scheduler.ReduceLROnPlateau
    if "verbose" in original.__init__.__code__.co_varnames:
        return

    class ReduceLROnPlateau(original):
        def __init__(self, *args, verbose=None, **kwargs):
            super().__init__(*args, **kwargs)

    lr_scheduler.ReduceLROnPlateau = ReduceLROnPlateau


def run_mmsa(job: dict, pickle_path: Path, epochs: int, repeats: int, workdir: Path) -> dict:
    import torch

    _map_pytorch_transformers()
    _drop_removed_scheduler_argument()
    from MMSA.config import get_config_regression
    from MMSA.data_loader import MMDataLoader
    from MMSA.models import AMIO
    from MMSA.trains import ATIO
    from MMSA.utils import setup_seed

    from msakit.lm import resolve_language_model
    from msakit.training.host_memory import keep_freed_memory

    model_name, seed = job["model"], job["seed"]
    args = get_config_regression(model_name, job["dataset"])
    args.update({
        "featurePath": str(pickle_path), "custom_feature": None, "feature_T": None,
        "feature_A": None, "feature_V": None, "device": torch.device("cpu"),
        "train_mode": "regression", "pretrained": resolve_language_model(LANGUAGE_MODEL),
        "cur_seed": 1, "model_save_path": str(workdir / f"mmsa-{model_name}-{seed}.pth"),
        "batch_size": job["batch_size"],
    })
    if job.get("mmsa_host_allocator") == "keep":
        keep_freed_memory()
    setup_seed(seed)
    dataloader = MMDataLoader(args, num_workers=0)
    if args.get("use_bert"):  # the loader sets BERT-base's 768
        args["feature_dims"][0] = LM_HIDDEN
        if args.get("text_out") == 768:
            args["text_out"] = LM_HIDDEN
    args["train_samples"] = len(dataloader["train"].dataset)
    if model_name in NEEDS_TRANSFORMERS_4:
        import transformers

        if int(transformers.__version__.split(".")[0]) >= 5:
            raise RuntimeError(
                f"MMSA's {model_name} needs transformers 4.x (this is {transformers.__version__}):"
                " pip install --no-deps --target DIR 'transformers==4.46.3' "
                "'tokenizers>=0.20,<0.21' 'huggingface_hub>=0.23.2,<1.0' and pass "
                "--mmsa-transformers DIR")
    if model_name in MMSA_BUILD_PATCHES:
        MMSA_BUILD_PATCHES[model_name](args)
    if model_name in SEQUENCE_LENGTH_MODELS:
        args["seq_lens"] = [TEXT_TOKENS] * 3
    model = AMIO(args)
    if model_name in MMSA_MODEL_PATCHES:
        MMSA_MODEL_PATCHES[model_name](model)
    trainer = ATIO().getTrain(args)
    passes = PASSES_PER_EPOCH.get(model_name, 1)
    timed = TimedTrainLoader(dataloader["train"], epochs * passes,
                             untimed_passes=UNTIMED_PASSES.get(model_name, 0))
    dataloader["train"] = timed
    try:
        trainer.do_train(model, dataloader)
    except BudgetReached:
        pass
    if not Path(args["model_save_path"]).exists():
        raise RuntimeError(f"MMSA {model_name} saved no checkpoint in {epochs} epoch(s): its "
                           "validation loss never improved on its initial 1e8 (NaN?)")
    model.load_state_dict(torch.load(args["model_save_path"], map_location="cpu"))
    test_seconds, test_cpu_seconds, results = [], [], None
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        results = trainer.do_test(model, dataloader["test"], mode="TEST")
        test_seconds.append(time.perf_counter() - started)
        test_cpu_seconds.append(time.process_time() - cpu_started)
    return {"train_seconds": per_epoch(timed.seconds, passes), "train_batches": len(timed),
            "train_cpu_seconds": per_epoch(timed.cpu_seconds, passes),
            "test_seconds": test_seconds, "test_cpu_seconds": test_cpu_seconds,
            "test_batches": len(dataloader["test"]),
            "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "metrics": {k: float(v) for k, v in results.items()
                        if k in METRICS[job["dataset"]]},
            "peak_rss_mib": peak_rss_mib()}


def msakit_overrides(job: dict, pickle_path: Path, epochs: int, cache_dir: Path) -> list[str]:
    return [f"data.path={pickle_path}", f"data.dataset={job['dataset']}",
            f"data.max_text_tokens={TEXT_TOKENS}", f"model.language_model={LANGUAGE_MODEL}",
            f"train.epochs={epochs}", "train.device=cpu", "train.num_threads=1",
            f"train.seed={job['seed']}", f"train.batch_size={job['batch_size']}",
            f"train.lm_cache_dir={cache_dir}", *MMSA_SETTINGS.get(job["model"], []),
            *([f"model.seq_lens=[{TEXT_TOKENS},{TEXT_TOKENS},{TEXT_TOKENS}]"]
              if job["model"] in SEQUENCE_LENGTH_MODELS else []),
            *job.get("msakit_set", [])]


def run_msakit(job: dict, pickle_path: Path, epochs: int, repeats: int, workdir: Path) -> dict:
    import torch

    from msakit.config import build_config
    from msakit.lm_cache import SplitTextStates
    from msakit.models import create_model
    from msakit.training.loading import (
        EpochLoader,
        feature_dims,
        load_experiment_data,
        loader_for,
    )
    from msakit.training.trainer import Trainer, evaluate_model

    config = build_config(job["model"], msakit_overrides(job, pickle_path, epochs,
                                                         workdir / "lm-cache"),
                          preset=job["preset"])
    dataset, (partition,) = load_experiment_data(config)
    torch.manual_seed(job["seed"])
    model = create_model(config.model, feature_dims(dataset, config))
    run_dir = workdir / f"msakit-{job['model']}-{job['seed']}"
    run_dir.mkdir()
    trainer = Trainer(config, run_dir, dataset.name, progress=False)
    model.to(trainer.device)
    # a frozen LM's states, computed before the timed passes (MMSA reads them from the pickle)
    text_states = SplitTextStates.for_model(model, config, dataset.word_aligned)
    if text_states is not None:
        for split in partition:
            if not isinstance(split, str):
                text_states(split)
    epoch_loader = EpochLoader(partition.train, dataset, config, job["seed"],
                               text_states=text_states)
    seconds: dict[int, list[float]] = {}  # epoch -> its passes (training stages, main pass)
    cpu_seconds: dict[int, list[float]] = {}
    trainer.fit(model, lambda epoch: TimedPasses(epoch_loader(epoch),
                                                 seconds.setdefault(epoch, []),
                                                 cpu_seconds=cpu_seconds.setdefault(epoch, [])),
                loader_for(partition.valid, dataset, config, train=False,
                           text_states=text_states),
                torch.as_tensor(partition.train.labels, dtype=torch.float32))
    trainer.load_best(model)
    test_loader = loader_for(partition.test, dataset, config, train=False,
                             text_states=text_states)
    test_seconds, test_cpu_seconds, result = [], [], None
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = evaluate_model(model, test_loader, dataset.name, trainer.device)
        test_seconds.append(time.perf_counter() - started)
        test_cpu_seconds.append(time.process_time() - cpu_started)
    return {"train_seconds": [sum(s) for s in seconds.values()],
            "train_cpu_seconds": [sum(s) for s in cpu_seconds.values()],
            "train_batches": len(epoch_loader(1)),
            "test_seconds": test_seconds, "test_cpu_seconds": test_cpu_seconds,
            "test_batches": len(test_loader),
            "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "metrics": {k: float(result.metrics[k]) for k in METRICS[job["dataset"]]},
            "peak_rss_mib": peak_rss_mib()}


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

def _profile_last_epoch(epochs: int, passes: int, kernels: list[str]) -> dict:
    """Runs every training pass of the last epoch (passes ``(epochs - 1) * passes`` on, counted
    over :class:`TimedPasses`) under ``torch.profiler``; the returned dict gets the profiled
    passes' CPU time (the self time of every operator) and that of the operators whose names
    start with one of ``kernels``, in ms, when the run ends."""
    import torch

    totals = {"kernels_ms": 0.0, "profiled_ms": 0.0}
    timed_iter, count = TimedPasses.__iter__, [0]

    def profiled_iter(self):
        count[0] += 1
        if count[0] <= (epochs - 1) * passes:
            yield from timed_iter(self)
            return
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            yield from timed_iter(self)
        for event in prof.key_averages():
            totals["profiled_ms"] += event.self_cpu_time_total / 1e3
            if event.key.startswith(tuple(kernels)):
                totals["kernels_ms"] += event.self_cpu_time_total / 1e3

    TimedPasses.__iter__ = profiled_iter
    return totals


def _worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    runner = run_mmsa if args.worker == "mmsa" else run_msakit
    job = json.loads(args.job)
    kernels = job.get("kernels")
    if kernels:
        totals = _profile_last_epoch(args.epochs, PASSES_PER_EPOCH.get(job["model"], 1), kernels)
    with tempfile.TemporaryDirectory() as workdir:
        result = runner(job, args.pickle, args.epochs, args.test_repeats, Path(workdir))
    if kernels:
        # the profiled epoch is slower: the time tables use the epochs before it
        for key in ("train_seconds", "train_cpu_seconds"):
            result[key] = result[key][:-1]
        batches = result["train_batches"]
        result["kernels"] = {"names": kernels, "ms_per_step": totals["kernels_ms"] / batches,
                             "profiled_ms_per_step": totals["profiled_ms"] / batches}
    result["load_average"] = os.getloadavg()  # 1, 5, 15 minutes, at the run's end
    print("RESULT " + json.dumps(result), flush=True)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _step_ms(runs: list[dict], key: str = "train_seconds") -> float:
    """Median training pass over all epochs of all seeds, per batch, in ms."""
    return 1000 * statistics.median(s for r in runs for s in r[key]) / runs[0][
        "train_batches"]


def _test_s(runs: list[dict], key: str = "test_seconds") -> float:
    return statistics.median(s for r in runs for s in r[key])


def _print_table(title: str, header: list[str], rows: list[list[str]],
                 text_columns: int = 1) -> None:
    """A markdown table under ``title``: the first ``text_columns`` left-aligned, the numbers
    after them right-aligned; nothing without rows."""
    if not rows:
        return
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" if i < text_columns else "---:"
                            for i in range(len(header))) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _jobs_whose_runs_have(key: str, jobs: list[dict], runs: dict, failures: dict) -> list[dict]:
    """The jobs that did not fail and whose every run, on both sides, recorded ``key``."""
    return [job for job in jobs if job["model"] not in failures and all(
        key in run for toolkit in ("mmsa", "msakit") for run in runs[(job["model"], toolkit)])]


def print_tables(jobs: list[dict], runs: dict, failures: dict, left_out: list[str],
                 accuracy: bool, seeds: list[int]) -> None:
    print("\nms / training step: median training pass over the epochs (and seeds) / batches per "
          "pass; s / test pass: median over the repeats; ratio msakit / MMSA (< 1: msakit "
          "faster)\n")
    print("| model (data, preset) | batch | params MMSA / msakit | ms / step MMSA | msakit | "
          "ratio | s / test pass MMSA | msakit | ratio | peak RSS MiB MMSA / msakit |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for job in jobs:
        name = (f"{job['model']} ({job['dataset']}, "
                + (f"preset {job['preset']}" if job["preset"] else "MMSA_SETTINGS") + ")")
        key = job["model"]
        if key in failures:
            print(f"| {name} | {job['batch_size']} | failed: {failures[key]} |")
            continue
        mmsa, ours = runs[(key, "mmsa")], runs[(key, "msakit")]
        a_step, b_step = _step_ms(mmsa), _step_ms(ours)
        a_test, b_test = _test_s(mmsa), _test_s(ours)
        print(f"| {name} | {job['batch_size']} | {mmsa[0]['parameters']:,} / "
              f"{ours[0]['parameters']:,} | {a_step:.1f} | {b_step:.1f} | {b_step / a_step:.2f} "
              f"| {a_test:.3f} | {b_test:.3f} | {b_test / a_test:.2f} | "
              f"{max(r['peak_rss_mib'] for r in mmsa):.0f} / "
              f"{max(r['peak_rss_mib'] for r in ours):.0f} |")
    cpu_rows = []
    for job in _jobs_whose_runs_have("train_cpu_seconds", jobs, runs, failures):
        mmsa, ours = runs[(job["model"], "mmsa")], runs[(job["model"], "msakit")]
        a_step, b_step = (_step_ms(r, "train_cpu_seconds") for r in (mmsa, ours))
        a_test, b_test = (_test_s(r, "test_cpu_seconds") for r in (mmsa, ours))
        cpu_rows.append([job["model"], f"{a_step:.1f}", f"{b_step:.1f}", f"{b_step / a_step:.2f}",
                         f"{a_test:.3f}", f"{b_test:.3f}", f"{b_test / a_test:.2f}"])
    _print_table("CPU time of the process (one thread), the same medians: less moved by other "
                 "jobs on the machine than the wall times above",
                 ["model", "CPU ms / step MMSA", "msakit", "ratio", "CPU s / test pass MMSA",
                  "msakit", "ratio"], cpu_rows)
    kernel_rows = []
    for job in _jobs_whose_runs_have("kernels", jobs, runs, failures):
        sides = runs[(job["model"], "mmsa")], runs[(job["model"], "msakit")]
        a_in, b_in = (statistics.median(r["kernels"]["ms_per_step"] for r in side)
                      for side in sides)
        a_all, b_all = (statistics.median(r["kernels"]["profiled_ms_per_step"] for r in side)
                        for side in sides)
        kernel_rows.append([job["model"], ", ".join(sides[0][0]["kernels"]["names"]),
                            f"{a_in:.1f}", f"{a_in / a_all:.0%}", f"{b_in:.1f}",
                            f"{b_in / b_all:.0%}", f"{b_in / a_all:.2f}"])
    _print_table("The operators named by --kernels, in the last training epoch (under "
                 "torch.profiler, CPU self time, medians over seeds): ms per step in them, their "
                 "share of the profiled step; the floor is msakit's ms in them / MMSA's whole "
                 "profiled step, the lowest step ratio msakit can reach while those operators "
                 "take the time they take",
                 ["model", "operators", "MMSA ms / step in them", "share",
                  "msakit ms / step in them", "share", "floor"], kernel_rows, text_columns=2)
    if left_out:
        print("\nLeft out: " + "; ".join(left_out))
    if not accuracy:
        return
    print(f"\ntest metrics, mean ± std over seeds {' '.join(map(str, seeds))} "
          "(accuracies in %)\n")
    print("| model | metric | MMSA | msakit | msakit − MMSA |")
    print("| --- | --- | ---: | ---: | ---: |")
    for job in jobs:
        if job["model"] in failures:
            continue
        mmsa, ours = runs[(job["model"], "mmsa")], runs[(job["model"], "msakit")]
        for metric in METRICS[job["dataset"]]:
            scale = 1.0 if metric in ("MAE", "Corr") else 100.0
            a = [scale * r["metrics"][metric] for r in mmsa if metric in r["metrics"]]
            b = [scale * r["metrics"][metric] for r in ours]
            if a and b:
                print(f"| {job['model']} | {metric} | {_mean_std(a)} | {_mean_std(b)} | "
                      f"{statistics.mean(b) - statistics.mean(a):+.3f} |")


def print_saved_tables(paths: list[Path], accuracy: bool) -> None:
    """The tables of one or more ``--results`` files."""
    jobs: dict[str, dict] = {}
    runs: dict[tuple[str, str], list[dict]] = {}
    failures: dict[str, str] = {}
    seeds: set[int] = set()
    for path in paths:
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            model = entry["job"]["model"]
            jobs.setdefault(model, entry["job"])
            seeds.add(entry["seed"])
            if "failed" in entry:
                failures[model] = entry["failed"]
            else:
                runs.setdefault((model, entry["toolkit"]), []).append(entry["result"])
    for model in jobs:  # complete runs (e.g. a rerun after a fix) win over a failure
        complete = all((model, t) in runs for t in ("mmsa", "msakit"))
        if complete:
            failures.pop(model, None)
        elif model not in failures:
            failures[model] = "incomplete: not every run of it finished"
    print_tables(list(jobs.values()), runs, failures, [], accuracy, sorted(seeds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--models", nargs="+", help="default: every model both toolkits have")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 1 (1 2 3 with --accuracy)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--test-repeats", type=int, default=3)
    parser.add_argument("--accuracy", action="store_true",
                        help="also print the test metrics of both, mean ± std over the seeds")
    parser.add_argument("--mmsa-src", type=Path,
                        help="a thuiar/MMSA checkout's src folder (default: the installed MMSA)")
    parser.add_argument("--mmsa-transformers", type=Path, metavar="DIR",
                        help="a folder holding transformers 4.x, put first on the path of the "
                        "MMSA runs of the models whose MMSA code needs it (BERT_MAG)")
    parser.add_argument("--msakit-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every msakit run, after the preset's "
                        "(repeatable; e.g. train.host_allocator=system)")
    parser.add_argument("--mmsa-host-allocator", choices=["system", "keep"], default="system",
                        help="'keep': the MMSA runs' malloc keeps freed memory as msakit's "
                        "train.host_allocator=keep does (default 'system': MMSA as it runs)")
    parser.add_argument("--kernels", nargs="+", metavar="OPERATOR",
                        help="profile the last training epoch of every run and print the time "
                        "spent in operators whose names start with these (e.g. "
                        "aten::mkldnn_rnn_layer) and the step ratio's floor they set; the time "
                        "tables then use the epochs before it (give --epochs 4 or more)")
    parser.add_argument("--results", type=Path,
                        help="append every run's result to this JSON-lines file as it ends")
    parser.add_argument("--table-from", type=Path, nargs="+", metavar="RESULTS",
                        help="run nothing: print the tables of --results files (e.g. of "
                        "several runs of this script side by side)")
    parser.add_argument("--worker", choices=["mmsa", "msakit"], help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--pickle", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    seeds = args.seeds or ([1, 2, 3] if args.accuracy else [1])
    if args.table_from:
        print_saved_tables(args.table_from, args.accuracy)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    if args.mmsa_src is not None:
        sys.path.insert(0, str(args.mmsa_src.resolve()))
        env["PYTHONPATH"] = os.pathsep.join(
            [str(args.mmsa_src.resolve()), *filter(None, [env.get("PYTHONPATH")])])
    jobs, left_out = comparable_models(mmsa_configs(), args.models)
    spec = importlib.util.find_spec("MMSA")
    print(f"MMSA: {Path(spec.origin).parent}; models: {', '.join(j['model'] for j in jobs)}",
          flush=True)
    runs: dict[tuple[str, str], list[dict]] = {}
    failures: dict[str, str] = {}
    if args.kernels and args.epochs < 2:
        parser.error("--kernels profiles the last epoch and times the ones before it: give "
                     "--epochs 2 or more")
    settings = {"msakit_set": args.msakit_set, "mmsa_host_allocator": args.mmsa_host_allocator,
                **({"kernels": args.kernels} if args.kernels else {})}
    print(f"msakit overrides after the preset: {args.msakit_set or 'none'}; MMSA's malloc: "
          f"{args.mmsa_host_allocator}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        pickles = {}
        for dataset in sorted({j["dataset"] for j in jobs}):
            pickles[dataset] = Path(tmp) / f"mosi_229_mmsa_{dataset}.pkl"
            sizes = build_pickle(args.data, pickles[dataset],
                                 label_scale=1 / 3 if dataset == "sims" else 1.0)
        print(f"MMSA pickle: {sizes} clips (train/valid/test, split by video), "
              f"{TEXT_TOKENS} MiniLM tokens; {args.epochs} epochs per run; seeds {seeds}"
              + ("; SIMS settings: labels / 3" if "sims" in pickles else ""), flush=True)
        for seed in seeds:
            for job in jobs:
                if job["model"] in failures:
                    continue
                for toolkit in ("mmsa", "msakit"):
                    command = [sys.executable, __file__, "--worker", toolkit, "--job",
                               json.dumps({**job, "seed": seed, **settings}),
                               "--pickle", str(pickles[job["dataset"]]),
                               "--epochs", str(args.epochs),
                               "--test-repeats", str(args.test_repeats)]
                    run_env = env
                    if (toolkit == "mmsa" and job["model"] in NEEDS_TRANSFORMERS_4
                            and args.mmsa_transformers is not None):
                        run_env = {**env, "PYTHONPATH": os.pathsep.join(
                            [str(args.mmsa_transformers.resolve()), env.get("PYTHONPATH", "")])}
                    started = time.perf_counter()
                    done = subprocess.run(command, env=run_env, capture_output=True, text=True,
                                          check=False)
                    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
                    if done.returncode or not lines:
                        error = (done.stderr.strip().splitlines() or ["no output"])[-1]
                        failures[job["model"]] = f"{toolkit}: {error[:300]}"
                        if args.results is not None:
                            with args.results.open("a") as handle:
                                handle.write(json.dumps({"job": job, "seed": seed,
                                                         "toolkit": toolkit,
                                                         "failed": failures[job["model"]],
                                                         **settings}) + "\n")
                        print(f"  {job['model']} {toolkit} seed {seed} FAILED:\n"
                              f"{done.stderr[-3000:]}", flush=True)
                        break
                    result = json.loads(lines[-1][len("RESULT "):])
                    runs.setdefault((job["model"], toolkit), []).append(result)
                    if args.results is not None:
                        with args.results.open("a") as handle:
                            handle.write(json.dumps({"job": job, "seed": seed, "toolkit": toolkit,
                                                     "result": result, **settings}) + "\n")
                    print(f"  {job['model']} {toolkit} seed {seed}: "
                          f"{time.perf_counter() - started:.0f} s, "
                          f"{_step_ms([result]):.1f} ms / step ({result['train_batches']} steps "
                          f"/ pass), test pass {_test_s([result]):.3f} s, "
                          f"MAE {result['metrics'].get('MAE', float('nan')):.3f}"
                          + (f", CPU {_step_ms([result], 'train_cpu_seconds'):.1f} ms / step, "
                             f"load {result['load_average'][1]:.1f} (5 min)"
                             if "train_cpu_seconds" in result else ""), flush=True)
    print_tables(jobs, runs, failures, left_out, args.accuracy, seeds)


if __name__ == "__main__":
    main()
