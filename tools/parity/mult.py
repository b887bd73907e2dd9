"""Write MulT's parity fixture from the authors' code (yaohungt/Multimodal-Transformer).

    python tools/parity/mult.py --official /path/to/Multimodal-Transformer --out tests/parity/mult.pt

``--official`` is a checkout of https://github.com/yaohungt/Multimodal-Transformer (see
``tools/parity/misa.py`` for making one from the ``fetch`` mirror). The official ``MULTModel``
reads precomputed text features (GloVe in the paper); msakit's MulT reads a language model's
states. The fixture feeds the official model the states of the same small random BERT msakit
uses (``_word_aligned.BERT_CONFIG``), zeroed at padded tokens as msakit does, so parity covers the
whole msakit pipeline: BERT -> MulT -> L1 loss, and the gradients of BERT's weights too.

Run-time patches (nothing is copied): the official width ``d_l = d_a = d_v = 30`` is hard-coded;
a subclass turns those three attributes into constants of ``WIDTH`` (8) so the fixture stays
small; every dropout is 0; ``ReduceLROnPlateau(verbose=...)`` (removed from current PyTorch)
drops the argument; the positional embedding gets a contiguous input (current PyTorch's
``clone`` keeps strides, which breaks the official ``.view(-1)``); the loop's
``save_model``/``load_model`` keep the model in memory and
``input()`` returns at once.

Recorded (float64 compute, float32 storage): initial weights, inputs (right-padded to the batch's
longest clip, as msakit's collate pads), the prediction, the L1 loss and every gradient on the
first batch; the official ``train_model`` loop for one epoch over three batches with the text
features fixed (as GloVe features are; msakit: ``freeze_language_model``): clip_grad_norm_ 0.8,
Adam 1e-3, per-step losses and the weights after it, and the ReduceLROnPlateau settings. Then,
at the official default dropout rates (``OFFICIAL_DROPOUTS``, ``main.py``'s defaults), from the
same initial weights: the dropout map of BERT -> official MulT (rate and input shape of every
dropout call of one train-mode forward pass over the first batch, in call order) and the
eval-mode prediction of every batch.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import io
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _word_aligned as _common  # noqa: E402
from _common import record_rated  # noqa: E402

WIDTH = 8
#: main.py's defaults (every official dropout)
OFFICIAL_DROPOUTS = dict(attn_dropout=0.1, attn_dropout_a=0.0, attn_dropout_v=0.0,
                         relu_dropout=0.1, embed_dropout=0.25, res_dropout=0.1, out_dropout=0.0)
SETTINGS = dict(num_heads=2, nlevels=1, lr=1e-3, clip=0.8, when=20, num_epochs=1, batch_size=4)


def hyper_parameters(dims: dict[str, int]) -> types.SimpleNamespace:
    """What ``main.py`` hands ``train.initiate``: its defaults, dropouts 0, small sizes, MOSI."""
    return types.SimpleNamespace(
        model="MULT", vonly=True, aonly=True, lonly=True, aligned=False, dataset="mosi",
        attn_dropout=0.0, attn_dropout_a=0.0, attn_dropout_v=0.0, relu_dropout=0.0,
        embed_dropout=0.0, res_dropout=0.0, out_dropout=0.0, attn_mask=True, optim="Adam",
        batch_chunk=1, log_interval=30, name="parity", use_cuda=False, output_dim=1,
        criterion="L1Loss", layers=SETTINGS["nlevels"],
        orig_d_l=_common.BERT_CONFIG["hidden_size"], orig_d_a=dims["audio"],
        orig_d_v=dims["vision"], n_train=12, n_valid=4, n_test=4,
        **SETTINGS,
    )


def import_official(directory: Path):
    sys.path.insert(0, str(directory))
    from modules import position_embedding  # noqa: E402  (official modules/)

    from src import models, train  # noqa: E402  (official src/models.py, src/train.py)

    # current PyTorch's clone() keeps the input's strides, so the official .view(-1) on the
    # positions of a transposed input fails; give it a contiguous input (same values)
    positions_forward = position_embedding.SinusoidalPositionalEmbedding.forward
    position_embedding.SinusoidalPositionalEmbedding.forward = (
        lambda self, input: positions_forward(self, input.contiguous()))

    def constant(value):
        return property(lambda self: value, lambda self, _: None)

    class SmallMULT(models.MULTModel):
        d_l = d_a = d_v = constant(WIDTH)

    plateau = train.ReduceLROnPlateau

    def plateau_without_verbose(*args, verbose=None, **kwargs):
        return plateau(*args, **kwargs)

    train.ReduceLROnPlateau = plateau_without_verbose
    return SmallMULT, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=_common.REPO_ROOT / "tests/parity/mult.pt")
    args = parser.parse_args()
    small_mult, train = import_official(args.official)
    torch.set_default_dtype(torch.float64)  # after the import: src/dataset.py sets float32
    from transformers import BertModel

    batches = _common.real_batches()
    dims = {"audio": _common.AUDIO_DIMS, "vision": _common.VISION_DIMS}
    hyp = hyper_parameters(dims)

    torch.manual_seed(1111)  # the official main.py seed
    bert = BertModel(_common.small_bert_config())
    model = small_mult(hyp)
    _common.zero_dropout(model)
    for module in (bert, model):
        module.double()
        _common.round_to_float32(module)
    initial = {**{f"bert.{k}": v for k, v in _common.as_float32(bert.state_dict()).items()},
               **_common.as_float32(model.state_dict())}

    def text_states(batch, grad: bool):
        with torch.set_grad_enabled(grad):
            mask = batch["attention_mask"]
            hidden = bert(input_ids=batch["input_ids"], attention_mask=mask,
                          token_type_ids=batch["token_type_ids"]).last_hidden_state
            return hidden * mask.unsqueeze(-1).to(hidden.dtype)

    # -- BERT -> official MulT -> L1 on the first batch -------------------------------------
    first = batches[0]
    bert.train()
    model.train()
    prediction, _ = model(text_states(first, True), first["audio"], first["vision"])
    loss = torch.nn.L1Loss()(prediction, first["labels"].view(-1, 1))
    loss.backward()
    gradients = {**{f"bert.{n}": p.grad for n, p in bert.named_parameters()
                    if p.grad is not None},
                 **{n: p.grad for n, p in model.named_parameters() if p.grad is not None}}
    no_gradient = sorted([f"bert.{n}" for n, p in bert.named_parameters() if p.grad is None]
                         + [n for n, p in model.named_parameters() if p.grad is None])

    # -- the official train_model loop, text features fixed ----------------------------------
    model.zero_grad()
    loader = [((torch.arange(len(b["labels"])), text_states(b, False), b["audio"], b["vision"]),
               b["labels"].view(-1, 1, 1), {}) for b in batches]  # official labels (N, 1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=hyp.lr)  # train.initiate's optimiser
    scheduler = train.ReduceLROnPlateau(optimizer, mode="min", patience=hyp.when, factor=0.1)
    settings = {"model": model, "optimizer": optimizer, "criterion": torch.nn.L1Loss(),
                "ctc_a2l_module": None, "ctc_v2l_module": None, "ctc_a2l_optimizer": None,
                "ctc_v2l_optimizer": None, "ctc_criterion": None, "scheduler": scheduler}
    step_losses = []
    original_step = optimizer.step

    def recording_step(*a, **k):
        step_losses.append(float(settings["criterion"].last))
        return original_step(*a, **k)

    class RecordingL1(torch.nn.L1Loss):
        def forward(self, prediction, target):
            value = super().forward(prediction, target)
            self.last = value.detach()
            return value

    settings["criterion"] = RecordingL1()
    optimizer.step = recording_step
    train.save_model = lambda *a, **k: None
    train.load_model = lambda *a, **k: model
    original_input = builtins.input
    builtins.input = lambda *a, **k: ""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            train.train_model(settings, hyp, loader[:3], loader[:1], loader[:1])
    finally:
        builtins.input = original_input
    after = _common.as_float32(model.state_dict())

    # -- at the official rates, same initial weights (after the run: its records unchanged) ---
    class BertThenMulT(torch.nn.Module):
        """BERT's masked states -> the official MulT at the official rates."""

        def __init__(self):
            super().__init__()
            self.bert = BertModel(_common.small_bert_config())
            self.mult = small_mult(types.SimpleNamespace(**{**vars(hyp), **OFFICIAL_DROPOUTS}))

        def forward(self, batch):
            mask = batch["attention_mask"]
            hidden = self.bert(input_ids=batch["input_ids"], attention_mask=mask,
                               token_type_ids=batch["token_type_ids"]).last_hidden_state
            text = hidden * mask.unsqueeze(-1).to(hidden.dtype)
            return self.mult(text, batch["audio"], batch["vision"])[0].view(-1)

    rated = BertThenMulT().double()
    rated.bert.load_state_dict({k.removeprefix("bert."): v.double() for k, v in initial.items()
                                if k.startswith("bert.")})
    rated.mult.load_state_dict({k: v.double() for k, v in initial.items()
                                if not k.startswith("bert.")})
    dropout_map, eval_predictions = record_rated(rated, batches,
                                                 lambda m, b: {"prediction": m(b)})

    fixture = {
        **_common.fixture_header("mult", "yaohungt/Multimodal-Transformer", args.official),
        "sizes": {"embed_dim": WIDTH, "num_heads": hyp.num_heads, "num_layers": hyp.nlevels,
                  "memory_layers": max(hyp.nlevels, 3), **dims},
        "official_settings": {"lr": hyp.lr, "clip_norm": hyp.clip,
                              "plateau": {"mode": scheduler.mode, "factor": scheduler.factor,
                                          "patience": scheduler.patience,
                                          "threshold": scheduler.threshold,
                                          "threshold_mode": scheduler.threshold_mode}},
        "initial": initial,
        "batches": _common.stored_batches(batches),
        "prediction": prediction.detach().view(-1).clone(),
        "losses": {"task": loss.detach().clone()},
        "gradients": _common.as_float32(gradients),
        "no_gradient": no_gradient,
        "trajectory": {"steps": 3, "losses": torch.tensor(step_losses), "after": after},
        "official_dropouts": dict(OFFICIAL_DROPOUTS), "dropout_map": dropout_map,
        "eval_predictions": [p["prediction"] for p in eval_predictions],
    }
    _common.save_fixture(fixture, args.out)


if __name__ == "__main__":
    main()
