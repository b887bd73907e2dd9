"""Replays the fixtures of ``tools/parity/_mmsa.py`` (MMSA's feature-based models: TFN, LMF,
EF-LSTM, ...) in msakit and compares everything they recorded.

A test module gives: the fixture, the msakit model name and config overrides, and
``to_msakit(official_name, tensor) -> (msakit_name, tensor) | None`` (``None``: an official
tensor msakit does not have, e.g. TFN's constant ``output_range``). The checks every module runs
are the ``check_*`` functions here; the overrides every module shares are the ``*_overrides``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from _parity import fit_with_scripted_validation, load_fixture
from _recording import record_close

from msakit.config import build_config
from msakit.models import FeatureDims, create_model
from msakit.modules import dropout as fast_dropout

MMSA_COMMIT = "a94e65d07fa1ae0d44e552390074b29b0898edfd"
TOLERANCE = 1e-5
Mapping = Callable[[str, torch.Tensor], "tuple[str, torch.Tensor] | None"]
#: MMSA's recorded unimodal features -> the keys of msakit's ``unimodal_features``
UNIMODAL_FEATURES = {"Feature_t": "text", "Feature_a": "audio", "Feature_v": "vision"}
#: the multi-task models' loss terms, in the order of MMSA's criterion calls (tasks "MTAV")
MULTITASK_TERMS = ("task", "text", "audio", "vision")


def module_fixtures(name: str, prepare: Callable[[dict], dict] | None = None):
    """A test module's ``(fixture, bert_dir)`` pytest fixtures (module scope): the fixture of
    ``tools/parity/<name>.py`` (its recorded commit asserted; passed through ``prepare``) and its
    tiny BERT saved to a folder. Bind them to those names: ``fixture, bert_dir = module_fixtures("tfn")``."""

    @pytest.fixture(scope="module")
    def fixture():
        loaded = load_fixture(name)
        check_fixture_origin(loaded)  # every test of the module replays MMSA v2.2.1's records
        return prepare(loaded) if prepare else loaded

    @pytest.fixture(scope="module")
    def bert_dir(fixture, tmp_path_factory):
        return small_bert_dir(fixture, tmp_path_factory.mktemp(f"tiny_bert_{name}"))

    return fixture, bert_dir


def training_overrides(fixture: dict, bert_dir: str) -> list[str]:
    """The fixture's frozen tiny BERT and MMSA's training loop: Adam at the fixture's learning
    rate and weight decay (none recorded: MMSA's Adam without weight decay), a step per batch,
    its early stopping."""
    optimiser, stopping = fixture["optimiser"], fixture["early_stopping"]
    return [
        f"model.language_model={bert_dir}", "model.freeze_language_model=true",
        f"train.lr={optimiser['learning_rate']}",
        f"train.weight_decay={optimiser.get('weight_decay', 0)}",
        "train.optimizer=adam", "train.grad_accumulation=1",
        f"train.patience={stopping['early_stop']}",
        f"train.min_improvement={stopping['min_improvement']}",
        "train.epochs=10", "train.device=cpu",
    ]


def hidden_overrides(fixture: dict) -> list[str]:
    """The text/audio/vision hidden sizes of the fixture's ``sizes["hidden_dims"]``."""
    text_hidden, audio_hidden, video_hidden = fixture["sizes"]["hidden_dims"]
    return [f"model.text_hidden={text_hidden}", f"model.audio_hidden={audio_hidden}",
            f"model.vision_hidden={video_hidden}"]


def mmsa_reading_overrides(fixture: dict, text_reads_padding: bool = True) -> list[str]:
    """MMSA's reading of its zero-padded arrays: audio/vision summed over the real steps / the
    array length, and (``text_reads_padding``) the text LSTM over the padded length."""
    steps = fixture["average_steps"]
    return (["model.text_lstm_reads_padding=true"] if text_reads_padding else []) + [
        f"model.audio_average_steps={steps}", f"model.vision_average_steps={steps}"]


def multitask_overrides(fixture: dict, rates: dict) -> list[str]:
    """MLF-DNN/MLMF's unimodal heads, dropouts (``rates``: ``dropouts`` (audio, video, text),
    ``post_dropouts`` (text, audio, video, fusion)), sub-network weight decays and task weights."""
    sizes, optimiser, weights = fixture["sizes"], fixture["optimiser"], fixture["task_weights"]
    audio_p, video_p, text_p = rates["dropouts"]
    post_text, post_audio, post_video, post_fusion = rates["post_dropouts"]
    return [
        f"model.post_text_dim={sizes['post_text_dim']}",
        f"model.post_audio_dim={sizes['post_audio_dim']}",
        f"model.post_vision_dim={sizes['post_video_dim']}",
        f"model.audio_dropout={audio_p}", f"model.vision_dropout={video_p}",
        f"model.text_dropout={text_p}", f"model.post_text_dropout={post_text}",
        f"model.post_audio_dropout={post_audio}", f"model.post_vision_dropout={post_video}",
        f"model.post_fusion_dropout={post_fusion}",
        f"model.text_weight_decay={optimiser['text_weight_decay']}",
        f"model.audio_weight_decay={optimiser['audio_weight_decay']}",
        f"model.vision_weight_decay={optimiser['video_weight_decay']}",
        f"model.loss_weights={{task: {weights['M']}, text: {weights['T']}, "
        f"audio: {weights['A']}, vision: {weights['V']}}}",
    ]


def block_overrides(fixture: dict, blocks: dict[str, str], rates: dict) -> list[str]:
    """MFN-style blocks: for each official config key in ``blocks`` (-> msakit's block name),
    the hidden size of ``fixture["shapes"]`` and the dropout of ``rates``."""
    out = []
    for key, block in blocks.items():
        out += [f"model.{block}_hidden={fixture['shapes'][key]}",
                f"model.{block}_dropout={rates[key]}"]
    return out


def small_bert_dir(fixture: dict, folder) -> str:
    """The fixture's tiny BERT (its recorded weights) saved to ``folder``."""
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(**fixture["tiny_bert"]))
    bert.load_state_dict(fixture["bert_state"])
    bert.save_pretrained(folder)
    return str(folder)


def msakit_batches(fixture: dict) -> list[dict]:
    """The fixture's batches as msakit's collate lays them out (word-level audio/vision)."""
    batches = []
    for b in fixture["batches"]:
        mask = torch.arange(b["audio_full"].shape[1])[None] < b["lengths"][:, None]
        batches.append({
            "index": b["index"], "input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
            "token_type_ids": torch.zeros_like(b["input_ids"]),
            "audio": b["audio_full"].double(), "audio_mask": mask, "audio_lengths": b["lengths"],
            "vision": b["vision_full"].double(), "vision_mask": mask,
            "vision_lengths": b["lengths"],
            "labels": b["labels"]["M"], "host_lengths": {"audio": b["lengths"],
                                                         "vision": b["lengths"]},
        })
        for task in "TAV":  # unimodal labels (MMSA's multi-task models)
            if task in b["labels"]:
                batches[-1][f"labels_{task}"] = b["labels"][task]
    return batches


def mapped_state(fixture_state: dict, to_msakit: Mapping) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in fixture_state.items():
        mapped = to_msakit(name, value.double())
        if mapped is not None:
            out[mapped[0]] = mapped[1]
    return out


def build_model(name: str, overrides: list[str], fixture: dict, to_msakit: Mapping):
    """msakit's model at ``overrides``, float64, with the fixture's initial weights (every
    msakit weight outside the LM must come from the official state)."""
    config = build_config(name, overrides)
    batch = fixture["batches"][0]
    dims = FeatureDims(batch["audio_full"].shape[-1], batch["vision_full"].shape[-1])
    model = create_model(config.model, dims).double()
    state = mapped_state(fixture["initial_state"], to_msakit)
    own = {k for k in model.state_dict() if not k.startswith("text_encoder.")}
    assert set(state) == own, set(state) ^ own
    model.load_state_dict(state, strict=False)
    lm = model.text_encoder.model.state_dict()
    assert all(torch.equal(lm[k].double(), v.double()) for k, v in fixture["bert_state"].items())
    return config, model


@contextlib.contextmanager
def on_every_dropout(record: Callable[[float, torch.Tensor], None]):
    """Within the block, every dropout call in train mode first calls ``record(p, input)``:
    PyTorch's ``F.dropout`` and msakit's :func:`msakit.modules.dropout.dropout` (patched in its
    module, which its ``Dropout`` modules call, and under every name another msakit module
    imported it as). msakit's never calls ``F.dropout``, so no call is seen twice."""
    def recorder(original):
        def recording(input, p=0.5, training=True, inplace=False):
            if training:
                record(float(p), input)
            return original(input, p, training, inplace)
        return recording

    fast = fast_dropout.dropout
    bindings = [(F, "dropout", F.dropout)] + [
        (module, name, fast) for module in list(sys.modules.values())
        if getattr(module, "__name__", "").startswith("msakit.")
        for name, value in list(vars(module).items()) if value is fast]
    for owner, name, original in bindings:
        setattr(owner, name, recorder(original))
    try:
        yield
    finally:
        for owner, name, original in bindings:
            setattr(owner, name, original)


@contextlib.contextmanager
def recorded_dropout(calls: list):
    """Within the block, every dropout call in train mode (:func:`on_every_dropout`) appends
    ``(p, shape)``."""
    with on_every_dropout(lambda p, input: calls.append((p, tuple(input.shape)))):
        yield calls


def dropout_map(model: torch.nn.Module, batch: dict) -> list[tuple[float, tuple]]:
    """``(p, input shape)`` of every dropout call of one train-mode forward pass, in order.

    The calls made inside an ``nn.LSTM``'s or ``nn.MultiheadAttention``'s forward are not in
    the list: PyTorch's modules drop inside their kernels, where no call is seen, and msakit's
    (:class:`~msakit.modules.dropout.LSTM`, :class:`~msakit.modules.dropout.MultiheadAttention`)
    draw their own masks there, which :func:`assert_kernel_dropouts` checks against each
    module's rate and layers as the pass ends."""
    model.train()
    calls: list = []
    with dropouts_outside_kernels(model, calls):
        model(batch)
    return calls


def dropout_map_with_attention(model: torch.nn.Module, batch: dict) -> list[tuple[float, tuple]]:
    """:func:`dropout_map`, and where an ``nn.MultiheadAttention`` runs, its dropout on the
    attention weights as ``(p, (B * heads, L_q, L_k))``: the call MulT's official attention
    makes on its weights (rate 0 included, as the official code calls ``F.dropout`` with it)."""
    model.train()
    calls: list = []
    with dropouts_outside_kernels(model, calls, attention_calls=True):
        model(batch)
    return calls


@contextlib.contextmanager
def dropouts_outside_kernels(model: torch.nn.Module, calls: list,
                             attention_calls: bool = False):
    """Within the block, every dropout call outside the forwards of the model's ``nn.LSTM`` and
    ``nn.MultiheadAttention`` modules appends ``(p, shape)`` to ``calls`` (with
    ``attention_calls``, each attention's forward appends ``(p, (B * heads, L_q, L_k))``
    first); the calls inside those forwards are checked by :func:`assert_kernel_dropouts`
    when the block ends."""
    kernels = {name: module for name, module in model.named_modules()
               if isinstance(module, (torch.nn.LSTM, torch.nn.MultiheadAttention))}
    events: dict[str, list] = {}
    running: list[str] = []

    def enter(name):
        def hook(module, args, kwargs):
            running.append(name)
            event = kernel_call(module, args, kwargs)
            events.setdefault(name, []).append(event)
            if attention_calls and event[0] == "attention":
                batch, heads, query_steps, key_steps = event[1]
                calls.append((float(module.dropout), (batch * heads, query_steps, key_steps)))
        return hook

    def leave(module, args, output):
        running.pop()

    def record(p, input):
        (events[running[-1]] if running else calls).append((p, tuple(input.shape)))

    hooks = [handle for name, module in kernels.items()
             for handle in (module.register_forward_pre_hook(enter(name), with_kwargs=True),
                            module.register_forward_hook(leave))]
    try:
        with on_every_dropout(record):
            yield calls
    finally:
        for hook in hooks:
            hook.remove()
    for name, module_events in events.items():
        assert_kernel_dropouts(kernels[name], module_events)


def kernel_call(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
    """What a call of an LSTM or attention module drops, read from its inputs: ``("input",
    (B, L, D) or (L, B, D), training)`` or ``("packed", data shape, training)`` for an LSTM,
    ``("attention", (B, heads, L_q, L_k), training)`` for a batch-first attention."""
    if isinstance(module, torch.nn.LSTM):
        x = args[0] if args else kwargs["input"]
        if isinstance(x, torch.Tensor):
            return ("input", tuple(x.shape), module.training)
        return ("packed", tuple(x.data.shape), module.training)
    query = args[0] if args else kwargs["query"]
    key = args[1] if len(args) > 1 else kwargs["key"]
    if not module.batch_first:
        raise ValueError("the dropout maps read batch-first attentions only")
    return ("attention", (query.shape[0], module.num_heads, query.shape[1], key.shape[1]),
            module.training)


def assert_kernel_dropouts(module: torch.nn.Module, events: list) -> None:
    """``events`` of one module (:func:`dropouts_outside_kernels`): after each call's
    :func:`kernel_call`, msakit's modules in train mode with a rate above 0 drop, at that
    rate: the LSTM ``num_layers - 1`` layer outputs ``(B, L, directions * hidden)`` (not over
    a ``PackedSequence``, which runs PyTorch's forward), the attention its weights ``(B,
    heads, L_q, L_k)``, once. PyTorch's modules draw nothing outside their kernels."""
    from msakit.modules.dropout import LSTM, MultiheadAttention

    expected = []
    for event in events:
        if isinstance(event[0], float):  # a drawn mask: what the calls before it expect
            continue
        kind, shape, training = event
        expected.append(event)
        if not training or module.dropout == 0:
            continue
        if kind == "input" and isinstance(module, LSTM):
            width = module.hidden_size * (2 if module.bidirectional else 1)
            expected += [(float(module.dropout), (*shape[:2], width))] * (module.num_layers - 1)
        elif kind == "attention" and isinstance(module, MultiheadAttention):
            expected.append((float(module.dropout), shape))
    assert events == expected, f"dropout inside {type(module).__name__}"


def batch_first_official_calls(calls, size: int, heads: int, text_shape: tuple[int, int]
                               ) -> list[tuple[float, tuple]]:
    """MulT-style official dropout calls in msakit's batch-first layout: the text input the
    official code drops as ``(B, d_text, L_t)`` (transposed for its Conv1d) -> ``(B, L_t,
    d_text)``; its sequence-first transformer calls ``(L, B, d)`` -> ``(B, L, d)``; attention
    weights ``(B * heads, L_q, L_k)`` and 2-D calls unchanged. ``text_shape`` is ``(L_t,
    d_text)``; ``size`` must differ from the lengths and widths it could be confused with."""
    length, width = text_shape
    if size in (size * heads, length, width):
        raise ValueError(f"batch size {size} is ambiguous with heads/lengths/widths")
    out = []
    for p, shape in calls:
        shape = tuple(shape)
        if shape == (size, width, length):
            shape = (size, length, width)
        elif len(shape) == 3 and shape[1] == size and shape[0] != size * heads:
            shape = (shape[1], shape[0], shape[2])
        out.append((float(p), shape))
    return out


def lstm_dropouts(model: torch.nn.Module) -> list[tuple[float, int]]:
    """``(dropout, num_layers)`` of every ``nn.LSTM`` outside the language model, in order."""
    return [(float(m.dropout), int(m.num_layers)) for n, m in model.named_modules()
            if isinstance(m, torch.nn.LSTM) and not n.startswith("text_encoder.")]


def replay_training(config, model, fixture, tmp_path, monkeypatch, features: bool = False):
    """``Trainer.fit`` over the fixture's batches with its scripted validation losses; returns
    ``(record, summary)``: per forward pass the output (and, with ``features``, what the
    model's ``unimodal_features`` returned within it), per optimiser step the gradients and the
    state after it."""
    batches = msakit_batches(fixture)
    record = {"forwards": [], "steps": []}
    if features:
        unimodal = model.unimodal_features

        def recording_unimodal(batch):
            result = unimodal(batch)
            record["forwards"].append({"features": {k: v.detach().clone()
                                                    for k, v in result.items()}})
            return result

        model.unimodal_features = recording_unimodal
    forward = model.forward

    def recording_forward(batch):
        output = forward(batch)
        if not features:
            record["forwards"].append({})
        record["forwards"][-1]["output"] = output
        return output

    model.forward = recording_forward

    def record_step(m, gradients):
        record["steps"].append({"after_forward": len(record["forwards"]), "gradients": gradients,
                                "state": {k: v.detach().clone()
                                          for k, v in m.state_dict().items()}})

    labels = torch.cat([b["labels"] for b in batches]).float()
    try:
        summary, _ = fit_with_scripted_validation(
            config, model, batches, labels, fixture["early_stopping"]["valid_losses"], tmp_path,
            monkeypatch, record_step)
    finally:
        del model.forward
        if features:
            del model.unimodal_features
    return record, summary


def assert_training_matches(fixture, record, summary, to_msakit: Mapping,
                            features: dict[str, str] | None = None,
                            terms: tuple[str, ...] = ("task",)) -> None:
    """Predictions, losses (and the official ``Feature_*`` -> msakit feature names in
    ``features``) of every forward pass; every gradient and state after every step; the epochs
    early stopping ran. A multi-task fixture records every criterion call of a forward pass:
    they are msakit's loss ``terms``, in that order."""
    official = fixture["forwards"]
    assert len(record["forwards"]) == len(official) >= 6
    for i, (theirs, ours) in enumerate(zip(official, record["forwards"])):
        output = ours["output"]
        torch.testing.assert_close(output.prediction, theirs["M"].double().reshape(-1),
                                   atol=TOLERANCE, rtol=0, msg=f"forward {i + 1}: prediction")
        for key, name in (features or {}).items():
            torch.testing.assert_close(ours["features"][name], theirs[key].double(),
                                       atol=TOLERANCE, rtol=0, msg=f"forward {i + 1}: {key}")
        official_losses = theirs.get("criterion_calls", theirs["loss"].reshape(1))
        assert len(official_losses) == len(terms) == len(output.losses)
        for term, value in zip(terms, official_losses):
            record_close(output.losses[term], value, f"forward {i + 1}: loss {term}", TOLERANCE)
            assert abs(float(output.losses[term].detach()) - float(value)) < TOLERANCE, \
                f"forward {i + 1}: loss {term}"
    steps = fixture["optimizer_steps"]
    assert [s["after_forward"] for s in record["steps"]] == \
        [s["after_forward"] for s in steps] == list(range(1, len(official) + 1))
    for i, (theirs, ours) in enumerate(zip(steps, record["steps"])):
        for kind in ("gradients", "state"):
            compared = 0
            for name, value in theirs[kind].items():
                mapped = to_msakit(name, value.double())
                if mapped is None:
                    continue
                if kind == "gradients" and mapped[0] not in ours[kind]:
                    # frozen in msakit: the official optimiser must never have changed it
                    # (checked on the last recorded state where this step's was not kept)
                    state = theirs["state"] or next(s["state"] for s in reversed(steps)
                                                    if s["state"])
                    assert torch.equal(state[name], fixture["initial_state"][name]), \
                        f"step {i + 1}: {name} is trained officially but frozen in msakit"
                    continue
                torch.testing.assert_close(ours[kind][mapped[0]].double(), mapped[1],
                                           atol=TOLERANCE, rtol=0,
                                           msg=f"step {i + 1}: {kind} of {name}")
                compared += 1
            # a fixture may keep the state of some steps only (graph_mfn: size)
            assert compared > 0 or (kind == "state" and not theirs[kind])
    assert sum(bool(s["state"]) for s in steps) >= 2
    stopping = fixture["early_stopping"]
    assert summary["epochs_run"] == stopping["epochs_run"]
    best = min(range(len(stopping["valid_losses"][:stopping["epochs_run"]])),
               key=lambda e: stopping["valid_losses"][e]) + 1
    assert summary["best_epoch"] == best


def assert_dropout_map_matches(fixture, model) -> None:
    """Every dropout call (those of rate 0 too), in call order, with the official rate and input
    shape. LSTM inter-layer dropouts (inside the official kernel) are compared from the modules
    (and msakit's own draws of them by :func:`dropout_map`)."""
    official = fixture["dropout_map"]
    batch = msakit_batches(fixture)[official["batch"]]
    ours = dropout_map(model, batch)
    expected = [(p, tuple(shape)) for p, shape in official["calls"]]
    assert any(p > 0 for p, _ in expected), "the official map has no dropout at its rates"
    assert ours == expected
    assert lstm_dropouts(model) == [(p, layers) for _, p, layers in official["lstm"]]


def assert_eval_forward_matches(fixture, model) -> None:
    """Eval-mode predictions at the official dropout rates, from the same initial weights."""
    model.eval()
    with torch.no_grad():
        for i, (batch, theirs) in enumerate(zip(msakit_batches(fixture),
                                                fixture["eval_forwards"])):
            torch.testing.assert_close(model(batch).prediction, theirs["M"].double().reshape(-1),
                                       atol=TOLERANCE, rtol=0, msg=f"eval batch {i}")


def check_fixture_origin(fixture: dict) -> None:
    """The fixture was recorded from MMSA v2.2.1."""
    assert fixture["official"]["repo"] == "thuiar/MMSA"
    assert fixture["official"]["commit"] == MMSA_COMMIT


def check_training(name: str, overrides: list[str], fixture: dict, to_msakit: Mapping,
                   tmp_path, monkeypatch, features: dict[str, str] | None = None,
                   terms: tuple[str, ...] = ("task",)) -> dict:
    """Builds ``name`` at ``overrides`` from the fixture's weights, replays the training
    (recording the unimodal features when ``features`` names them) and asserts
    :func:`assert_training_matches`; returns the record."""
    config, model = build_model(name, overrides, fixture, to_msakit)
    record, summary = replay_training(config, model, fixture, tmp_path, monkeypatch,
                                      features=features is not None)
    assert_training_matches(fixture, record, summary, to_msakit, features, terms)
    return record


def check_dropout_map_and_eval_forward(name: str, overrides: list[str], fixture: dict,
                                       to_msakit: Mapping) -> None:
    """At the official dropout rates (in ``overrides``): the dropout map and the eval-mode
    predictions."""
    _, model = build_model(name, overrides, fixture, to_msakit)
    assert_dropout_map_matches(fixture, model)
    assert_eval_forward_matches(fixture, model)


def check_frozen(record: dict, fixture: dict, names: dict[str, str]) -> None:
    """Each msakit parameter of ``names`` (-> its official name) ends the training with its
    initial official value."""
    last = record["steps"][-1]["state"]
    for ours, theirs in names.items():
        assert torch.equal(last[ours], fixture["initial_state"][theirs].double()), ours


def check_unimodal_heads(record: dict, fixture: dict) -> None:
    """The multi-task models' unimodal head outputs (``extras``) of every forward pass."""
    for ours, theirs in zip(record["forwards"], fixture["forwards"]):
        for head, key in (("text", "T"), ("audio", "A"), ("vision", "V")):
            torch.testing.assert_close(ours["output"].extras[head],
                                       theirs[key].double().reshape(-1), atol=TOLERANCE, rtol=0)


def check_missing_unimodal_labels_error(name: str, overrides: list[str], fixture: dict,
                                        to_msakit: Mapping) -> None:
    """A unimodal loss term without its labels is a ``ConfigError`` naming them and the fix."""
    from msakit.errors import ConfigError

    _, model = build_model(name, overrides, fixture, to_msakit)
    batch = {k: v for k, v in msakit_batches(fixture)[0].items() if k != "labels_T"}
    with pytest.raises(ConfigError, match="labels_T.*model.loss_weights"):
        model.eval()(batch)
