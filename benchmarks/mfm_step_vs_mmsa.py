"""One MFM training step, msakit vs MMSA v2.2.1's own code, on the same batch (CPU, one thread).

    python benchmarks/mfm_step_vs_mmsa.py --official /path/to/MMSA [--steps 20] [--preset mosi]

The batch has MMSA's aligned MOSI/MOSEI shapes at the preset's batch size: fixed BERT token
features ``(B, 50, 768)`` (msakit reads them as cached frozen-LM states, ``text_hidden``, as with
``train.lm_cache=auto``), audio ``(B, 50, 5)`` and vision ``(B, 50, 20)`` (MOSI; MOSEI: 74, 35).
Both models are built at the preset's sizes with the same weights; a step is forward, the task
L1, the weighted reconstruction and MMD terms, backward and Adam as MMSA's trainer builds it
(one group, Adam's default lr, the preset's weight decay). Prints the median of ``--steps``
steps of each after 3 warm-up steps, both in this process, one MMSA step then one msakit step in
turn (so that a shared machine's load drifts over both alike).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "parity"))
from _mmsa import AttributeDict  # noqa: E402

STEPS, BERT_DIM = 50, 768
FEATURE_DIMS = {"mosi": (5, 20), "mosei": (74, 35)}  # MMSA's aligned_50 COVAREP / FACET widths


def median_step_seconds(first, second, steps: int) -> tuple[float, float]:
    """Medians of ``steps`` timed calls of ``first`` and of ``second``, alternating, after 3
    warm-up calls of each."""
    for _ in range(3):
        first()
        second()
    times: tuple[list, list] = ([], [])
    for _ in range(steps):
        for step, out in zip((first, second), times):
            start = time.perf_counter()
            step()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--preset", default="mosi", choices=sorted(FEATURE_DIMS))
    args = parser.parse_args()
    torch.set_num_threads(1)

    from transformers import BertConfig, BertModel

    from msakit.config import build_config
    from msakit.models import FeatureDims, create_model
    from msakit.training.trainer import make_optimizer

    folder = tempfile.mkdtemp()
    BertModel(BertConfig(hidden_size=BERT_DIM, num_hidden_layers=1, num_attention_heads=12,
                         intermediate_size=64, vocab_size=64)).save_pretrained(folder)
    config = build_config("mfm", [f"model.language_model={folder}"], preset=args.preset)
    cfg, batch_size = config.model, config.train.batch_size
    audio_dim, vision_dim = FEATURE_DIMS[args.preset]

    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, STEPS + 1, (batch_size,), generator=generator)
    mask = torch.arange(STEPS)[None] < lengths[:, None]
    text = torch.randn(batch_size, STEPS, BERT_DIM, generator=generator) * mask[..., None]
    audio = torch.randn(batch_size, STEPS, audio_dim, generator=generator) * mask[..., None]
    vision = torch.randn(batch_size, STEPS, vision_dim, generator=generator) * mask[..., None]
    labels = torch.randint(-15, 16, (batch_size,), generator=generator).float() / 5

    official_step, initial = official_step_function(config, text, audio, vision, labels,
                                                    args.official)
    model = create_model(cfg, FeatureDims(audio_dim, vision_dim)).train()
    missing, _ = model.load_state_dict(initial, strict=False)
    assert all(k.startswith("text_encoder.") for k in missing), missing
    optimizer = make_optimizer(model, config)
    full = torch.ones(batch_size, STEPS, dtype=torch.bool)
    batch = {"input_ids": torch.ones(batch_size, STEPS, dtype=torch.long),
             "attention_mask": mask.long(), "text_hidden": text,
             "audio": audio, "audio_mask": full, "vision": vision, "vision_mask": full,
             "labels": labels}

    def msakit_step():
        optimizer.zero_grad()
        output = model(batch)
        loss = sum(cfg.loss_weights[k] * v for k, v in output.losses.items())
        loss.backward()
        optimizer.step()

    theirs, ours = median_step_seconds(official_step, msakit_step, args.steps)
    print(f"MFM ({args.preset} sizes, batch {batch_size}, 1 thread, median of {args.steps} "
          f"steps): MMSA {theirs * 1e3:.1f} ms, msakit {ours * 1e3:.1f} ms, "
          f"ratio {ours / theirs:.2f}")


def official_step_function(config, text, audio, vision, labels, official_root: Path):
    """MMSA's MFM at ``config``'s sizes: ``(step, initial weights under msakit's names)``, the
    step as MMSA's trainer takes it."""
    from _mmsa import load_official

    model_module, _ = load_official(official_root, "models/singleTask/MFM.py",
                                    "trains/singleTask/MFM.py")
    cfg, weights = config.model, config.model.loss_weights
    blocks = {"NN1Config": "att1", "NN2Config": "att2", "gamma1Config": "gamma1",
              "gamma2Config": "gamma2", "outConfig": "out"}
    official_args = AttributeDict({
        "feature_dims": (BERT_DIM, audio.shape[-1], vision.shape[-1]),
        "hidden_dims": (cfg.text_hidden, cfg.audio_hidden, cfg.vision_hidden),
        "memsize": cfg.mem_dim, "windowsize": 2, "train_mode": "regression", "num_classes": 1,
        "device": torch.device("cpu"),
        **{k: {"shapes": getattr(cfg, f"{b}_hidden"), "drop": getattr(cfg, f"{b}_dropout")}
           for k, b in blocks.items()},
        **{k: getattr(cfg, k) for k in (
            "zy_size", "zl_size", "za_size", "zv_size", "fy_size", "fl_size", "fa_size",
            "fv_size", "zy_to_fy_dropout", "zl_to_fl_dropout", "za_to_fa_dropout",
            "zv_to_fv_dropout", "fy_to_y_dropout")},
        "lda_xl": weights["text_reconstruction"], "lda_xa": weights["audio_reconstruction"],
        "lda_xv": weights["vision_reconstruction"]})
    torch.manual_seed(1)
    official = model_module.MFM(official_args).train()
    initial = {re.sub(r"^(z[ylav]_to_f[ylav])_(fc[12])\.", r"\1.\2.", k): v.clone()
               for k, v in official.state_dict().items()}
    # MMSA's trainer: no lr passed (Adam's default), the configured weight decay
    optimizer = torch.optim.Adam(official.parameters(), weight_decay=config.train.weight_decay)
    l1 = torch.nn.L1Loss()

    def official_step():
        optimizer.zero_grad()
        prediction, gen_loss, mmd_loss, missing_loss = official(text, audio, vision)
        loss = (l1(prediction.squeeze(1), labels) + gen_loss + weights["mmd"] * mmd_loss
                + missing_loss)
        loss.backward()
        optimizer.step()

    return official_step, initial


if __name__ == "__main__":
    main()
