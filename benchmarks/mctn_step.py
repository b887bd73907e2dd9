"""One MCTN training step, msakit vs MMSA v2.2.1, on the same MOSI-shaped batch (CPU).

    PYTHONPATH=src python benchmarks/mctn_step.py --official /path/to/MMSA [--steps 20]

Both sides: MMSA's MOSI hyper-parameters (config_regression.json ``mctn``: batch 32, 50 aligned
steps, hidden 32, Adam 1e-4, gradient norm clipped at 1.0), MMSA's fixed 768-wide BERT features
for the text (msakit reads them as cached LM states, ``text_hidden``, as its LM cache gives
them), audio 5 and vision 20 wide, the same initial weights (copied from MMSA's model into
msakit's), float32, one thread, train mode. MMSA's step is its loop's body (``zero_grad``,
forward with the loss inside the model, backward, ``clip_grad_norm_``, ``Adam.step``; its
hard-coded ``'cuda'`` patched to the CPU); msakit's is ``Trainer``'s (forward, weighted loss,
backward, clip, Adam step), in MMSA's mode (``recurrence=mmsa_batch_axis``,
``teacher_forcing_ratio=1.0``: the same computation) and in the default ``time`` recurrence
(ratio 0.5). The three steps take turns (one of each per round, ``--warmup`` rounds first), so
that a machine's changing load slows them alike; printed: the median CPU time (one thread: less
moved by other jobs than wall time) of ``--steps`` timed steps of each and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "parity"))
sys.path.insert(0, str(ROOT / "tests" / "parity"))

BATCH, STEPS, TEXT, AUDIO, VISION = 32, 50, 768, 5, 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import json

    from _mmsa import AttributeDict, load_official
    from test_mctn_parity import to_msakit
    from transformers import BertConfig, BertModel

    from msakit.config import build_config
    from msakit.models import FeatureDims, create_model
    from msakit.training.trainer import clip_gradients, make_optimizer, weighted_loss

    model_module, _ = load_official(args.official, "models/singleTask/MCTN.py",
                                    "trains/singleTask/MCTN.py")
    config = json.loads((args.official / "src/MMSA/config/config_regression.json").read_text())
    params = {**config["mctn"]["commonParams"], **config["mctn"]["datasetParams"]["mosi"]}
    settings = AttributeDict({**params, "device": torch.device("cpu")})

    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, STEPS + 1, (BATCH,), generator=generator)
    mask = torch.arange(STEPS)[None] < lengths[:, None]
    text, audio, vision = (torch.randn(BATCH, STEPS, d, generator=generator) * mask[..., None]
                           for d in (TEXT, AUDIO, VISION))
    labels = torch.empty(BATCH).uniform_(-3, 3, generator=generator)

    torch.manual_seed(0)
    theirs = model_module.MCTN(settings)
    theirs.seq2seq1.device = theirs.seq2seq2.device = "cpu"  # MMSA hard-codes 'cuda'
    theirs.train()
    their_optimizer = torch.optim.Adam(
        [p for p in theirs.parameters() if p.requires_grad], lr=params["init_lr"])

    def their_step():
        theirs.zero_grad()
        loss, _ = theirs(text, audio, vision, labels.view(-1, 1), lengths=None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), params["grad_clip"])
        their_optimizer.step()

    with tempfile.TemporaryDirectory() as folder:
        # a BERT as wide as MMSA's features; it never runs (the batch carries its states)
        BertModel(BertConfig(vocab_size=32, hidden_size=TEXT, num_hidden_layers=1,
                             num_attention_heads=12, intermediate_size=32)).save_pretrained(folder)
        batch = {"input_ids": torch.ones(BATCH, STEPS, dtype=torch.long),
                 "attention_mask": mask.long(), "text_hidden": text,
                 "audio": audio, "audio_mask": mask, "vision": vision, "vision_mask": mask,
                 "labels": labels}

        def our_step_function(*overrides):
            ours_config = build_config("mctn", [f"model.language_model={folder}",
                                                "train.device=cpu", *overrides])
            ours = create_model(ours_config.model, FeatureDims(AUDIO, VISION))
            state = dict(to_msakit(k, v) for k, v in theirs.named_parameters())
            ours.load_state_dict(state, strict=False)
            ours.train()
            optimizer = make_optimizer(ours, ours_config)
            parameters = [p for p in ours.parameters() if p.requires_grad]

            def step():
                output = ours(batch)
                weighted_loss(output, ours_config.model.loss_weights, "mctn").backward()
                clip_gradients(parameters, ours_config)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return step

        steps = {"MMSA": their_step,
                 "msakit mmsa_batch_axis": our_step_function(
                     "model.recurrence=mmsa_batch_axis", "model.teacher_forcing_ratio=1.0"),
                 "msakit time": our_step_function()}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for i in range(args.warmup + args.steps):  # interleaved: a loaded machine slows all alike
            for name, step in steps.items():
                started = time.process_time()
                step()
                if i >= args.warmup:
                    times[name].append(time.process_time() - started)
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"MCTN training step, batch {BATCH}, {STEPS} steps, text {TEXT}, audio {AUDIO}, "
          f"vision {VISION}, 1 thread, median CPU time of {args.steps}:")
    for name, value in median.items():
        print(f"  {name:24s} {value * 1000:8.1f} ms   ratio to MMSA {value / median['MMSA']:.2f}")


if __name__ == "__main__":
    main()
