"""Write MISA's parity fixture from the authors' code (declare-lab/MISA).

    python tools/parity/misa.py --official /path/to/MISA --out tests/parity/misa.pt

``--official`` is a checkout of https://github.com/declare-lab/MISA (the ``fetch`` tool gives a
bare mirror; ``git --git-dir=... archive HEAD | tar -x -C DIR`` and ``echo <commit> > DIR/COMMIT``
make a checkout). The script imports the official ``src/models.py`` and ``src/solver.py`` and
patches at run time only what needs a download or a GPU:

* ``BertConfig/BertModel.from_pretrained('bert-base-uncased')`` -> the small random BERT of
  ``_word_aligned.BERT_CONFIG`` (hidden 32), and the official ``project_t`` (hard-coded 768 inputs)
  rebuilt with 32 inputs;
* ``gensim`` (imported by the solver, unused with BERT) -> an empty module;
* every dropout probability -> 0 (the two codes cannot draw the same masks).

It builds the official model (``hidden_size`` 8, LSTM sizes = the feature sizes), runs the
official ``Solver.build`` (orthogonal recurrent init, optimiser), and records in float64:

* the initial weights (rounded to float32-representable values, stored float32);
* for the first batch: the prediction, each loss term as ``Solver.train`` computes it
  (``cls`` MSE, ``diff``, ``cmd``, ``recon``, and the weighted sum), and every parameter's gradient;
* the training trajectory: ``Solver.train`` for one epoch over the three batches (clip by value
  1.0 on the trainable parameters, Adam 1e-4), the per-step losses and the weights after it;
* at the official default dropout rates (``--dropout 0.5``; the fusion transformer layer's fixed
  0.1), from the same initial weights: the dropout map (rate and input shape of every dropout call
  of one train-mode forward pass over the first batch, in call order, and the attention dropout
  of the ``nn.MultiheadAttention``) and the eval-mode prediction of every batch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _word_aligned as _common  # noqa: E402
from _common import record_rated  # noqa: E402

HIDDEN = 8
LOSS_WEIGHTS = {"diff_weight": 0.3, "sim_weight": 1.0, "recon_weight": 1.0}
OFFICIAL_DROPOUT = 0.5  # src/config.py --dropout


def official_config(dims: dict[str, int], dropout: float = 0.0) -> types.SimpleNamespace:
    """The official ``Config`` attributes the model and solver read (official defaults, MOSI)."""
    return types.SimpleNamespace(
        embedding_size=300, visual_size=dims["vision"], acoustic_size=dims["audio"],
        num_classes=1, dropout=dropout, activation=nn.ReLU, rnncell="lstm", use_bert=True,
        use_cmd_sim=True, hidden_size=HIDDEN, reverse_grad_weight=1.0, data="mosi",
        model="MISA", learning_rate=1e-4, optimizer=torch.optim.Adam, clip=1.0, patience=6,
        n_epoch=1, name="parity", **LOSS_WEIGHTS,
    )


def import_official(directory: Path):
    sys.path.insert(0, str(directory / "src"))
    sys.modules.setdefault("gensim", types.ModuleType("gensim"))
    import models  # noqa: E402  (official src/models.py)
    import solver  # noqa: E402  (official src/solver.py)

    config = _common.small_bert_config()
    models.BertConfig = types.SimpleNamespace(from_pretrained=lambda *a, **k: config)
    models.BertModel = types.SimpleNamespace(
        from_pretrained=lambda *a, config=None, **k: __import__(
            "transformers").BertModel(config)
    )
    return models, solver


def official_inputs(batch: dict) -> tuple:
    """The official collate's tuple, sequence-first: t, v, a, y, l, bert ids, types, mask."""
    return (
        batch["input_ids"][:, 1:-1].t().contiguous(),  # word ids (unused with BERT)
        batch["vision"].transpose(0, 1).contiguous(),
        batch["audio"].transpose(0, 1).contiguous(),
        batch["labels"].view(-1, 1),
        batch["lengths"],
        batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=_common.REPO_ROOT / "tests/parity/misa.pt")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    models, solver = import_official(args.official)
    batches = _common.real_batches()
    dims = {"audio": _common.AUDIO_DIMS, "vision": _common.VISION_DIMS}
    config = official_config(dims)

    torch.manual_seed(336)  # the official train.py seed
    model = models.MISA(config)
    text_hidden = _common.BERT_CONFIG["hidden_size"]
    model.project_t.project_t = nn.Linear(text_hidden, HIDDEN)  # official: 768 inputs
    _common.zero_dropout(model)
    model.double()

    def loader(items):
        return [official_inputs(b) for b in items]

    run = solver.Solver(config, config, config, loader(batches), loader(batches[:1]),
                        loader(batches[:1]), is_train=True, model=model)
    with contextlib.redirect_stdout(io.StringIO()):
        run.build(cuda=False)  # orthogonal weight_hh init, Adam over trainable parameters
    _common.round_to_float32(model)
    initial = _common.as_float32(model.state_dict())

    # -- one forward/backward on the first batch, losses combined as Solver.train does -------
    run.criterion = nn.MSELoss(reduction="mean")
    run.loss_diff, run.loss_recon, run.loss_cmd = (solver.DiffLoss(), solver.MSE(),
                                                   solver.CMD())
    model.train()
    model.zero_grad()
    t, v, a, y, lengths, ids, types_, mask = official_inputs(batches[0])
    prediction = model(t, v, a, lengths, ids, types_, mask)
    losses = {
        "task": run.criterion(prediction, y),
        "diff": run.get_diff_loss(),
        "cmd": run.get_cmd_loss(),
        "recon": run.get_recon_loss(),
    }
    total = (losses["task"] + config.diff_weight * losses["diff"]
             + config.sim_weight * losses["cmd"] + config.recon_weight * losses["recon"])
    total.backward()
    gradients = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    no_gradient = sorted(name for name, p in model.named_parameters() if p.grad is None)

    # -- the official training loop over the three batches -----------------------------------
    model.load_state_dict({k: v.double() for k, v in initial.items()})
    step_losses = []
    original_backward = torch.Tensor.backward

    def recording_backward(tensor, *a, **k):
        step_losses.append(float(tensor.detach()))
        return original_backward(tensor, *a, **k)

    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
        cwd = os.getcwd()
        os.chdir(workdir)
        try:
            with contextlib.ExitStack() as stack:
                stack.callback(setattr, torch.Tensor, "backward", original_backward)
                torch.Tensor.backward = recording_backward
                run.build(cuda=False)  # fresh optimiser; re-runs the official freezing rules
                model.load_state_dict({k: v.double() for k, v in initial.items()})
                run.train()
        finally:
            os.chdir(cwd)
    after = _common.as_float32(model.state_dict())

    # -- at the official rates, same initial weights (after the run: its records unchanged) ---
    rated = models.MISA(official_config(dims, OFFICIAL_DROPOUT))
    rated.project_t.project_t = nn.Linear(text_hidden, HIDDEN)
    rated.load_state_dict({k: v.double() for k, v in initial.items()})
    dropout_map, eval_predictions = record_rated(
        rated.double(), batches, lambda m, b: {"prediction": m(*(
            x for i, x in enumerate(official_inputs(b)) if i != 3)).view(-1)})

    fixture = {
        **_common.fixture_header("misa", "declare-lab/MISA", args.official),
        "sizes": {"hidden_size": HIDDEN, **dims},
        "official_settings": {"lr": config.learning_rate, "clip_value": config.clip,
                              "patience": config.patience, **LOSS_WEIGHTS},
        "initial": initial,
        "batches": _common.stored_batches(batches),
        "prediction": prediction.detach().view(-1).clone(),
        "losses": {**{k: v.detach().clone() for k, v in losses.items()},
                   "total": total.detach().clone()},
        "gradients": _common.as_float32(gradients),
        "no_gradient": no_gradient,
        "trajectory": {"steps": len(batches), "losses": torch.tensor(step_losses),
                       "after": after},
        "official_dropout": OFFICIAL_DROPOUT, "dropout_map": dropout_map,
        "eval_predictions": [p["prediction"] for p in eval_predictions],
    }
    _common.save_fixture(fixture, args.out)


if __name__ == "__main__":
    main()
