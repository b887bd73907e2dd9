"""CM-BERT against the authors' code (thuiar/Cross-Modal-BERT ``model.py`` and
``run_classifier.py``), from the fixture of ``tools/parity/cm_bert.py`` (no official code here).

The official run: ``BertForSequenceClassification`` with ``BertFinetun`` (the masked multimodal
attention) on a tiny random BERT (hidden 16, 2 layers, 2 heads), six real MOSI clips in three
batches of two, COVAREP rows repeated per sub-word token with zero rows for [CLS]/[SEP],
float64. With every dropout 0, ``run_classifier.py``'s steps for three epochs (frozen
embeddings, three parameter groups, BertAdam with warmup_linear over ``t_total`` = 9 steps and
per-parameter clipping to norm 1, loss = mean of 0.5 (y^ - y)^2); msakit runs the same through
``Trainer.fit`` (``train.optimizer=bert_adam``, ``train.scheduler=warmup_linear`` per step,
``train.grad_clip_scope=per_parameter``, ``model.feature_scale=batch``) and must match every
prediction and loss, every gradient (before and after clipping), every parameter after the
recorded steps and the epoch kept. At bert-base's dropout (0.1) and the layer's 0.3: the same
dropout calls in train mode (BERT's attention-probability dropout runs inside PyTorch's
``scaled_dot_product_attention`` in transformers and is read from the modules; the official
code's dropout on BERT's pooled output, which it never uses, is the one call msakit does not
make), and the same eval-mode predictions. And the official ``BertAdam`` on fixed gradients.

Names: ``bert.*`` -> ``text_encoder.model.*``, ``BertFinetun.*`` -> ``attention.*``
(``proj_t``/``proj_a``: Conv1d kernel-1 weights squeezed; ``text_weight_1`` -> ``text_weight``,
``audio_weight_1`` -> ``audio_weight``, ``LayerNorm1`` -> ``layer_norm``), ``classifier``.
"""

from __future__ import annotations

import pytest
import torch
from _mmsa_parity import (
    TOLERANCE,
    assert_eval_forward_matches,
    assert_training_matches,
    mapped_state,
    msakit_batches,
    recorded_dropout,
    replay_training,
)
from _parity import load_fixture

from msakit.config import build_config
from msakit.models import FeatureDims, create_model
from msakit.training.bert_adam import BertAdam
from msakit.training.trainer import clip_gradients, warmup_linear_factor

OFFICIAL_REPO = "thuiar/Cross-Modal-BERT"
OFFICIAL_COMMIT = "3e44dce6b00431f88f8d5de12bef9706116fa97b"
RENAMES = (("BertFinetun.text_weight_1", "attention.text_weight"),
           ("BertFinetun.audio_weight_1", "attention.audio_weight"),
           ("BertFinetun.LayerNorm1.", "attention.layer_norm."),
           ("BertFinetun.", "attention."), ("bert.", "text_encoder.model."),
           ("classifier.", "classifier."))


@pytest.fixture(scope="module")
def fixture():
    loaded = load_fixture("cm_bert")
    assert loaded["official"]["repo"] == OFFICIAL_REPO
    assert loaded["official"]["commit"] == OFFICIAL_COMMIT
    return loaded


def to_msakit(name: str, value: torch.Tensor):
    for old, new in RENAMES:
        if name.startswith(old):
            if name.startswith(("BertFinetun.proj_t.", "BertFinetun.proj_a.")):
                value = value.squeeze(-1)  # Conv1d(kernel 1) -> Linear
            return new + name[len(old):], value
    raise KeyError(f"no msakit name for the official parameter {name!r}")


def bert_dir(fixture, folder, dropout: float = 0.0) -> str:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(**{**fixture["tiny_bert"], "hidden_dropout_prob": dropout,
                            "attention_probs_dropout_prob": dropout})).save_pretrained(folder)
    return str(folder)


def build(fixture, folder, attention_dropout: float = 0.0, feature_scale: str = "batch"):
    optimiser = fixture["optimiser"]
    config = build_config("cm_bert", [
        f"model.language_model={folder}", f"model.attention_dropout={attention_dropout}",
        f"model.feature_scale={feature_scale}",
        f"train.lm_lr={optimiser['learning_rate']}", f"train.lr={optimiser['new_layer_lr']}",
        f"train.warmup_fraction={optimiser['warmup_proportion']}",
        "train.min_improvement=0.0", "train.device=cpu",
    ])
    batch = fixture["batches"][0]
    model = create_model(config.model, FeatureDims(batch["audio_full"].shape[-1],
                                                   batch["vision_full"].shape[-1])).double()
    state = mapped_state(fixture["initial_state"], to_msakit)
    parameters = {name for name, _ in model.named_parameters()}
    assert parameters <= set(state), parameters - set(state)
    model.load_state_dict(state, strict=False)
    return config, model


def test_fixture_is_from_the_authors_code_and_its_settings_are_msakits(fixture):
    settings = fixture["official_settings"]
    config = build_config("cm_bert")
    model, train = config.model, config.train
    assert model.projection_dim == 30 and model.attention_dropout == settings["attention_dropout"]
    assert model.hidden_dropout is None and model.loss == "half_mse" and model.freeze_embeddings
    assert model.freeze_classifier and model.feature_scale == "sample"
    assert (train.optimizer, train.scheduler, train.scheduler_interval, train.grad_clip_scope) \
        == ("bert_adam", "warmup_linear", "step", "per_parameter")
    assert train.lm_lr == settings["learning_rate"] and train.lr == settings["new_layer_lr"]
    assert train.warmup_fraction == settings["warmup_proportion"]
    assert train.weight_decay == train.lm_weight_decay == settings["weight_decay"]
    assert train.grad_clip_norm == settings["max_grad_norm"]
    assert train.epochs == settings["num_train_epochs"] and train.patience is None
    assert train.batch_size == settings["train_batch_size"]
    assert config.data.max_text_tokens == settings["max_seq_length"]
    assert fixture["t_total"] == train_steps(fixture)


def train_steps(fixture) -> int:
    return len(fixture["batches"]) * fixture["early_stopping"]["epochs_run"]


def test_cm_bert_training_matches_the_authors_code(fixture, tmp_path, monkeypatch):
    config, model = build(fixture, bert_dir(fixture, tmp_path / "bert"))
    record, summary = replay_training(config, model, fixture, tmp_path, monkeypatch)
    assert_training_matches(fixture, record, summary, to_msakit)
    # the embeddings stay fixed (official: requires_grad False) and BERT's layers train
    first = fixture["optimizer_steps"][0]["gradients"]
    assert first["bert.encoder.layer.0.attention.self.query.weight"].abs().max() > 0
    assert not model.text_encoder.model.embeddings.word_embeddings.weight.requires_grad


def test_cm_bert_gradients_before_clipping_match(fixture, tmp_path):
    """The first step's gradients as the backward gives them (the recorded steps hold them
    after BertAdam's clipping: a clipped gradient alone would hide a wrong scale)."""
    _, model = build(fixture, bert_dir(fixture, tmp_path / "bert"))
    model.train()
    output = model(msakit_batches(fixture)[0])
    output.losses["task"].backward()
    ours = dict(model.named_parameters())
    raw = fixture["optimizer_steps"][0]["raw_gradients"]
    clipped = fixture["optimizer_steps"][0]["gradients"]
    assert any(not torch.equal(raw[k], clipped[k]) for k in raw), "nothing was clipped"
    # the same parameters train: officially those with a gradient (the embeddings and the
    # classifier are frozen, the pooler gets none), in msakit those that require one
    mapped = dict(to_msakit(name, gradient.double()) for name, gradient in raw.items())
    assert set(mapped) == {name for name, p in ours.items() if p.requires_grad}
    assert "classifier.weight" not in mapped
    for target, expected in mapped.items():
        torch.testing.assert_close(ours[target].grad, expected, atol=TOLERANCE, rtol=0,
                                   msg=f"gradient of {target}")


def dropout_calls(model, batch) -> list[tuple[float, tuple]]:
    """msakit's dropout calls of one train-mode pass, BERT's attention-probability dropout (in
    ``scaled_dot_product_attention``) as ``(p, (B, heads, L, L))`` where the self-attention
    runs, as the official ``F.dropout`` on the probabilities."""
    calls: list = []

    def attention_call(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        size, length = hidden.shape[:2]
        calls.append((float(module.dropout.p),
                      (size, module.num_attention_heads, length, length)))

    layers = model.text_encoder.transformer_layers()
    hooks = [layer.attention.self.register_forward_pre_hook(attention_call, with_kwargs=True)
             for layer in layers]
    model.train()
    try:
        with recorded_dropout(calls):
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def test_cm_bert_dropout_map_and_eval_forward_match_the_authors_code(fixture, tmp_path):
    rates = fixture["official_settings"]
    _, model = build(fixture, bert_dir(fixture, tmp_path / "bert", fixture["bert_dropout"]),
                     attention_dropout=rates["attention_dropout"])
    official = fixture["dropout_map"]
    expected = [(float(p), tuple(shape)) for p, shape in official["calls"]]
    # the official classifier's dropout runs twice: first on BERT's pooled output, which
    # BertFinetun ignores (dead), then on the layer's [CLS] row
    dead = official["modules"].index("dropout")
    batch = msakit_batches(fixture)[official["batch"]]
    assert expected[dead] == (fixture["bert_dropout"], (len(batch["labels"]),
                                                       fixture["tiny_bert"]["hidden_size"]))
    del expected[dead]
    assert any(p > 0 for p, _ in expected)
    assert dropout_calls(model, batch) == expected
    assert_eval_forward_matches(fixture, model)


def test_sample_scale_equals_batch_scale_without_other_clips_or_padding(fixture, tmp_path):
    """The default per-clip norm is the official batch norm for a batch of one unpadded clip,
    and differs from it once a padded clip shares the batch."""
    folder = bert_dir(fixture, tmp_path / "bert")
    models = {mode: build(fixture, folder, feature_scale=mode)[1].eval()
              for mode in ("sample", "batch")}
    batch = msakit_batches(fixture)[0]
    lengths = batch["attention_mask"].sum(1)
    assert lengths[0] != lengths[1]
    shorter = int(lengths.argmin())
    single = {k: (v[shorter:shorter + 1, :int(lengths[shorter])] if k in (
        "input_ids", "attention_mask", "token_type_ids", "audio", "vision", "audio_mask",
        "vision_mask") else v[shorter:shorter + 1] if torch.is_tensor(v) and v.dim() else v)
        for k, v in batch.items() if k != "host_lengths"}
    with torch.no_grad():
        alone = {mode: m(single).prediction for mode, m in models.items()}
        together = {mode: m(batch).prediction[shorter] for mode, m in models.items()}
    torch.testing.assert_close(alone["sample"], alone["batch"], atol=1e-12, rtol=0)
    torch.testing.assert_close(together["sample"], alone["sample"][0], atol=1e-10, rtol=0)
    assert (together["batch"] - alone["batch"][0]).abs() > 1e-4


def test_bert_adam_matches_the_official_optimiser(fixture):
    """msakit's BertAdam, warmup_linear schedule and per-parameter clipping against
    pytorch_pretrained_bert 0.6.1's BertAdam on the same gradients (two groups, clipping
    active, warm-up and decay)."""
    record = fixture["bert_adam"]
    params = {k: torch.nn.Parameter(v.clone()) for k, v in record["initial"].items()}
    groups = [{"params": [params[k] for k in names], "weight_decay": decay}
              for names, decay in zip(record["groups"], record["weight_decay"])]
    optimizer = BertAdam(groups, lr=record["lr"], eps=record["eps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: warmup_linear_factor(k, record["t_total"], record["warmup"]))
    config = build_config("cm_bert", [f"train.grad_clip_norm={record['max_grad_norm']}"])
    for step, (gradients, expected) in enumerate(zip(record["gradients"], record["states"])):
        for k, p in params.items():
            p.grad = gradients[k].clone()
        clip_gradients(list(params.values()), config)
        optimizer.step()
        scheduler.step()
        for k, p in params.items():
            torch.testing.assert_close(p.detach(), expected[k], atol=1e-12, rtol=0,
                                       msg=f"step {step + 1}: {k}")
