"""One TFR-Net training step, msakit vs MMSA v2.2.1, on the same MOSI-shaped batch (CPU).

    PYTHONPATH=src python benchmarks/tfr_net_step.py --official /path/to/MMSA [--steps 20]

Both sides: MMSA's MOSI hyper-parameters (config_regression.json ``tfr_net``: batch 24, text 50
tokens, unaligned audio 500 x 5 and vision 375 x 20 steps, dropout rates, its three Adam
groups, clip by value 0.8), the packaged all-MiniLM-L6-v2 fine-tuned as the language model (MMSA's
``BertModel.from_pretrained`` patched to return it), the same initial weights (copied from MMSA's
model into msakit's), float32, one thread, train mode, the reconstruction terms in the loss
(epoch > 1). MMSA's step is its loop's body (``zero_grad``, forward on its loader's pre-masked
inputs, backward, ``clip_grad_value_``, ``Adam.step``); msakit's is ``Trainer``'s (forward with
its own per-clip masks, weighted loss, backward, clip, fused Adam step). MMSA's steps run first,
then (its model freed: about 3.5 GB each at these shapes) msakit's, ``--warmup`` steps each
first; printed: the median of ``--steps`` timed steps of each and the ratio.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "parity"))
sys.path.insert(0, str(ROOT / "tests" / "parity"))

BATCH, TEXT, AUDIO, VISION = 24, 50, (500, 5), (375, 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import json

    import tfr_net as generator  # tools/parity/tfr_net.py: MMSA's modules without __init__s
    import transformers
    from test_tfr_net_parity import to_msakit

    from msakit.config import build_config
    from msakit.lm import load_language_model, resolve_language_model
    from msakit.models import FeatureDims, create_model
    from msakit.training.trainer import clip_gradients, make_optimizer, weighted_loss

    language_model = "all-MiniLM-L6-v2"
    minilm = load_language_model(language_model)  # before the patch (msakit loads through it)
    transformers.BertModel.from_pretrained = classmethod(lambda cls, *a, **k: copy.deepcopy(minilm))
    transformers.BertTokenizer.from_pretrained = classmethod(lambda cls, *a, **k: None)
    model_module, train_module, data_module = generator.load_official(args.official)
    config = json.loads((args.official / "src/MMSA/config/config_regression.json").read_text())
    params = {**config["tfr_net"]["commonParams"], **config["tfr_net"]["datasetParams"]["mosi"]}
    hidden = minilm.config.hidden_size
    settings = generator.AttributeDict({
        **params, "train_mode": "regression", "dataset_name": "mosi", "device": torch.device("cpu"),
        "seq_lens": (TEXT, AUDIO[0], VISION[0]), "feature_dims": [hidden, AUDIO[1], VISION[1]],
        "missing_rate": (0.2, 0.2, 0.2), "missing_seed": (1111, 1111, 1111)})

    # one MOSI-shaped batch: random features and lengths, MMSA's masks from its generate_m
    rng = np.random.default_rng(0)
    text_lengths = rng.integers(8, TEXT + 1, BATCH)
    ids = np.zeros((BATCH, TEXT))
    mask = np.zeros((BATCH, TEXT))
    for i, n in enumerate(text_lengths):
        ids[i, :n] = np.r_[101, rng.integers(1000, 29000, n - 2), 102]
        mask[i, :n] = 1
    official = {}
    ids_m, _, _, text_missing = data_module.MMDataset.generate_m(None, ids, mask, None, 0.2, 1111,
                                                                 mode="text")
    official["text"] = np.stack([ids, mask, np.zeros_like(ids)], 1)
    official["text_m"] = np.stack([ids_m, mask, np.zeros_like(ids)], 1)
    official["text_missing_mask"] = text_missing
    lengths = {}
    for key, (steps, dim) in (("audio", AUDIO), ("vision", VISION)):
        lengths[key] = rng.integers(steps // 4, steps + 1, BATCH)
        x = rng.standard_normal((BATCH, steps, dim)).astype(np.float32)
        x *= (np.arange(steps)[None, :, None] < lengths[key][:, None, None])
        x_m, _, real, missing = data_module.MMDataset.generate_m(
            None, x, None, list(lengths[key]), 0.2, 1111, mode=key)
        official.update({key: x, f"{key}_m": x_m, f"{key}_mask": real, f"{key}_missing_mask": missing})
    official = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in official.items()}
    labels = torch.from_numpy(rng.uniform(-3, 3, BATCH).astype(np.float32))

    torch.manual_seed(0)
    theirs = model_module.TFR_NET(settings)
    theirs.train()
    trainer = train_module.TFR_NET(settings)
    bert = list(theirs.text_model.named_parameters())
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
    their_optimizer = torch.optim.Adam([
        {"params": [p for n, p in bert if not any(nd in n for nd in no_decay)],
         "weight_decay": params["weight_decay_bert"], "lr": params["learning_rate_bert"]},
        {"params": [p for n, p in bert if any(nd in n for nd in no_decay)],
         "weight_decay": 0.0, "lr": params["learning_rate_bert"]},
        {"params": [p for n, p in theirs.named_parameters() if "text_model" not in n],
         "weight_decay": params["weight_decay_other"], "lr": params["learning_rate_other"]}])

    ours_config = build_config("tfr_net", [f"model.language_model={language_model}",
                                           "model.unk_token_id=100",  # MiniLM's [UNK], as MMSA's
                                           "train.device=cpu"])
    ours = create_model(ours_config.model, FeatureDims(AUDIO[1], VISION[1]))
    state = {to_msakit(k): v for k, v in theirs.state_dict().items() if to_msakit(k)}
    ours.load_state_dict(state)
    ours.train()
    ours.on_epoch_start(2)
    our_optimizer = make_optimizer(ours, ours_config)
    parameters = [p for p in ours.parameters() if p.requires_grad]
    steps_mask = {k: torch.arange(s)[None] < torch.from_numpy(lengths[k])[:, None]
                  for k, (s, _) in (("audio", AUDIO), ("vision", VISION))}
    batch = {
        "input_ids": torch.from_numpy(ids).long(), "attention_mask": torch.from_numpy(mask).long(),
        "token_type_ids": torch.zeros(BATCH, TEXT, dtype=torch.long), "labels": labels,
        "ids": [f"clip{i}" for i in range(BATCH)],
        **{k: official[k] for k in ("audio", "vision")},
        **{f"{k}_lengths": torch.from_numpy(lengths[k]) for k in lengths},
        **{f"{k}_mask": steps_mask[k] for k in lengths},
        "host_lengths": {k: torch.from_numpy(lengths[k]) for k in lengths},
    }
    inputs = ((official["text"], official["text_m"], official["text_missing_mask"]),
              (official["audio"], official["audio_m"], official["audio_mask"],
               official["audio_missing_mask"]),
              (official["vision"], official["vision_m"], official["vision_mask"],
               official["vision_missing_mask"]))

    mmsa = {"model": theirs, "optimizer": their_optimizer, "criterion": trainer.criterion}
    del theirs, their_optimizer, trainer

    def their_step():
        mmsa["optimizer"].zero_grad()
        prediction, gen_loss = mmsa["model"](*inputs)
        loss = mmsa["criterion"](prediction, labels.view(-1, 1)) + gen_loss
        loss.backward()
        torch.nn.utils.clip_grad_value_(
            [p for p in mmsa["model"].parameters() if p.requires_grad], params["grad_clip"])
        mmsa["optimizer"].step()

    def our_step():
        output = ours(batch)
        weighted_loss(output, ours_config.model.loss_weights, "tfr_net").backward()
        clip_gradients(parameters, ours_config)
        our_optimizer.step()
        our_optimizer.zero_grad(set_to_none=True)

    def timed(step) -> list[float]:
        seconds = []
        for i in range(args.warmup + args.steps):
            started = time.perf_counter()
            step()
            if i >= args.warmup:
                seconds.append(time.perf_counter() - started)
        return seconds

    # one after the other, the first model freed before the second runs (peak memory: one)
    times = {"MMSA": timed(their_step)}
    mmsa.clear()
    gc.collect()
    times["msakit"] = timed(our_step)
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"TFR-Net training step, batch {BATCH}, text {TEXT}, audio {AUDIO}, vision {VISION}, "
          f"{resolve_language_model(language_model)}, 1 thread, median of {args.steps}:")
    print(f"  MMSA v2.2.1 {median['MMSA']:.3f} s   msakit {median['msakit']:.3f} s   "
          f"ratio msakit/MMSA {median['msakit'] / median['MMSA']:.2f}")


if __name__ == "__main__":
    main()
