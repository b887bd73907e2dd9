"""One MTFN training step, msakit vs MMSA v2.2.1's own code, on the same batch (CPU, one thread).

    python benchmarks/mtfn_step_vs_mmsa.py --official /path/to/MMSA [--steps 20] [--preset sims]

The batch has MMSA's CH-SIMS shapes at the preset's batch size: fixed BERT token features
``(B, 39, 768)`` (msakit reads them as cached frozen-LM states, ``text_hidden``, as with
``train.lm_cache=auto``), audio ``(B, 400, 33)`` and vision ``(B, 55, 709)``, time-averaged as MMSA's
``need_normalized`` loader gives them to MMSA's model. Both models are built at the preset's sizes
with the same weights; a step is forward, the four weighted L1 terms, backward and Adam with the
preset's parameter groups (MMSA: its trainer's ``do_train`` groups). Prints the median of
``--steps`` steps after 3 warm-up steps, both measured in this process back to back (MMSA's
first, then freed: at the sims sizes each model with its Adam state holds about 2.3 GB).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "parity"))
from _mmsa import AMIOLike, AttributeDict  # noqa: E402

TEXT_STEPS, AUDIO_STEPS, VISION_STEPS = 39, 400, 55
AUDIO_DIM, VISION_DIM, BERT_DIM = 33, 709, 768


def median_step_seconds(step, steps: int) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--preset", default="sims", choices=["sims", "simsv2"])
    args = parser.parse_args()
    torch.set_num_threads(1)

    from transformers import BertConfig, BertModel

    from msakit.config import build_config
    from msakit.models import FeatureDims, create_model
    from msakit.training.trainer import make_optimizer

    folder = tempfile.mkdtemp()
    BertModel(BertConfig(hidden_size=BERT_DIM, num_hidden_layers=1, num_attention_heads=12,
                         intermediate_size=64, vocab_size=64)).save_pretrained(folder)
    config = build_config("mtfn", [f"model.language_model={folder}"], preset=args.preset)
    cfg, batch_size = config.model, config.train.batch_size

    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, TEXT_STEPS + 1, (batch_size,), generator=generator)
    mask = torch.arange(TEXT_STEPS)[None] < lengths[:, None]
    text = torch.randn(batch_size, TEXT_STEPS, BERT_DIM, generator=generator) * mask[..., None]
    audio = torch.randn(batch_size, AUDIO_STEPS, AUDIO_DIM, generator=generator)
    vision = torch.randn(batch_size, VISION_STEPS, VISION_DIM, generator=generator)
    labels = {k: torch.randint(-5, 6, (batch_size,), generator=generator).float() / 5
              for k in "MTAV"}

    theirs, initial = official_step_seconds(args, config, text, audio, vision, labels)
    gc.collect()  # MMSA's model is freed: the sims sizes hold ~2.3 GB per model
    model = create_model(cfg, FeatureDims(AUDIO_DIM, VISION_DIM)).train()
    model.load_state_dict(initial, strict=False)
    optimizer = make_optimizer(model, config)
    batch = {"input_ids": torch.ones(batch_size, TEXT_STEPS, dtype=torch.long),
             "attention_mask": mask.long(), "text_hidden": text,
             "audio": audio, "audio_mask": torch.ones(batch_size, AUDIO_STEPS, dtype=torch.bool),
             "vision": vision,
             "vision_mask": torch.ones(batch_size, VISION_STEPS, dtype=torch.bool),
             "labels": labels["M"], "labels_T": labels["T"], "labels_A": labels["A"],
             "labels_V": labels["V"]}

    def msakit_step():
        optimizer.zero_grad()
        output = model(batch)
        loss = sum(cfg.loss_weights[k] * v for k, v in output.losses.items())
        loss.backward()
        optimizer.step()

    ours = median_step_seconds(msakit_step, args.steps)
    print(f"MTFN ({args.preset} sizes, batch {batch_size}, 1 thread, median of {args.steps} "
          f"steps): MMSA {theirs * 1e3:.1f} ms, msakit {ours * 1e3:.1f} ms, "
          f"ratio {ours / theirs:.2f}")


def official_step_seconds(args, config, text, audio, vision, labels) -> tuple[float, dict]:
    """MMSA's MTFN at ``config``'s sizes, its trainer's Adam groups: the median step time and
    its initial weights under msakit's names."""
    from _mmsa import load_official

    model_module, train_module = load_official(args.official, "models/multiTask/MTFN.py",
                                               "trains/multiTask/MTFN.py")
    cfg, weights = config.model, config.model.loss_weights
    official_args = AttributeDict({
        "feature_dims": (BERT_DIM, AUDIO_DIM, VISION_DIM),
        "hidden_dims": (cfg.text_hidden, cfg.audio_hidden, cfg.vision_hidden),
        "text_out": cfg.text_out, "post_fusion_dim": cfg.post_fusion_dim,
        "post_text_dim": cfg.post_text_dim, "post_audio_dim": cfg.post_audio_dim,
        "post_video_dim": cfg.post_vision_dim,
        "dropouts": (cfg.audio_dropout, cfg.vision_dropout, cfg.text_dropout),
        "post_dropouts": (cfg.post_text_dropout, cfg.post_audio_dropout,
                          cfg.post_vision_dropout, cfg.post_fusion_dropout),
        "train_mode": "regression", "num_classes": 1})
    torch.manual_seed(1)
    official = AMIOLike(model_module.MTFN(official_args)).train()
    m = official.Model
    official_initial = {k: v.clone() for k, v in m.state_dict().items()}
    other = [p for n, p in list(m.named_parameters())[2:]
             if not any(s in n for s in ("text_subnet", "audio_subnet", "video_subnet"))]
    official_optimizer = torch.optim.Adam([  # MMSA's do_train groups
        {"params": list(m.text_subnet.parameters()), "weight_decay": cfg.text_weight_decay},
        {"params": list(m.audio_subnet.parameters()), "weight_decay": cfg.audio_weight_decay},
        {"params": list(m.video_subnet.parameters()), "weight_decay": cfg.vision_weight_decay},
        {"params": list(official.parameters())[:2], "lr": 0.0}, {"params": other}],
        lr=config.train.lr)
    official_audio = audio.mean(1, keepdim=True)  # MMSA's need_normalized arrays
    official_vision = vision.mean(1, keepdim=True)
    task_weights = {"M": weights.get("task", 0.0), "T": weights.get("text", 0.0),
                    "A": weights.get("audio", 0.0), "V": weights.get("vision", 0.0)}

    def official_step():
        official_optimizer.zero_grad()
        outputs = official(text, official_audio, official_vision)
        loss = sum(w * torch.nn.functional.l1_loss(outputs[k], labels[k].view(-1, 1))
                   for k, w in task_weights.items())
        loss.backward()
        official_optimizer.step()

    initial = {k.replace("video", "vision"): v for k, v in _msakit_names(
        official_initial).items()}
    return median_step_seconds(official_step, args.steps), initial


def _msakit_names(state: dict) -> dict:
    import re

    return {re.sub(r"^post_(\w+?)_layer_(\d)\.", r"post_\1.layer_\2.", k): v
            for k, v in state.items() if k not in ("output_range", "output_shift")}


if __name__ == "__main__":
    main()
