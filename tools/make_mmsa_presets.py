"""Write the presets of msakit's MMSA ports from MMSA's own files (run by hand, never in CI).

    python tools/make_mmsa_presets.py --official /path/to/MMSA tfn lmf ef_lstm mfn graph_mfn

For each model and dataset (MOSI, MOSEI, SIMS) it reads MMSA's settings from
``src/MMSA/config/config_regression.json`` and MMSA's reproduced test numbers from
``results/result-stat.md`` (MAE and Corr there are x100: stored as fractions), and writes
``src/msakit/configs/presets/<model>/<dataset>.yaml``. ``--official`` is a checkout (or
``git archive``) of thuiar/MMSA with a ``COMMIT`` file or git metadata.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "parity"))
from _common import REPO_ROOT, official_commit  # noqa: E402

DATASETS = {"mosi": ("CMU-MOSI", "bert-base-uncased"), "mosei": ("CMU-MOSEI", "bert-base-uncased"),
            "sims": ("CH-SIMS", "bert-base-chinese")}
NO_CAP = "MMSA's loop has no epoch cap: early stopping ends it; epochs: 1000 only bounds it."
AVERAGED = [NO_CAP,
            "MMSA reads fixed BERT features: the LM is frozen. Audio/vision are averaged over their real",
            "steps; MMSA divides by its arrays' padded length (unaligned MOSI/MOSEI: audio 500, vision 375;",
            "SIMS: 400, 55), which model.audio_average_steps / vision_average_steps reproduce."]
TEXT_LEN = {"mosi": 50, "mosei": 50, "sims": 39}  # MMSA's text array lengths


def result_tables(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """``{dataset: {model: {column: cell}}}`` of the regression part of result-stat.md."""
    text = text.split("## Classification")[0]
    tables = {}
    for block in re.split(r"\n- ", text)[1:]:
        name = block.split("\n")[0].strip().lower()
        lines = [line for line in block.splitlines() if line.startswith("|")]
        header = [h.strip() for h in lines[0].strip("|").split("|")]
        rows = {}
        for line in lines[2:]:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = dict(zip(header, cells))
        tables[name] = rows
    return tables


def fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:  # YAML 1.1 floats need a dot
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    return str(value)


def train_fields(p: dict, weight_decay: bool = True) -> dict:
    return {"optimizer": "adam", "batch_size": p["batch_size"], "lr": p["learning_rate"],
            "weight_decay": float(p["weight_decay"]) if weight_decay else 0.0,
            "patience": p["early_stop"], "min_improvement": 1.0e-6, "selection_metric": "loss",
            "epochs": 1000}


def tfn(p: dict, dataset: str) -> tuple[dict, dict]:
    th, ah, vh = p["hidden_dims"]
    ad, vd, td, pd = p["dropouts"]
    return ({"freeze_language_model": True, "text_hidden": th, "audio_hidden": ah,
             "vision_hidden": vh, "text_out": p["text_out"],
             "post_fusion_dim": p["post_fusion_dim"], "audio_dropout": ad, "vision_dropout": vd,
             "text_dropout": td, "post_fusion_dropout": pd, "output_bound": 3.0, "loss": "l1"},
            train_fields(p, weight_decay=False))


def lmf(p: dict, dataset: str) -> tuple[dict, dict]:
    th, ah, vh = p["hidden_dims"]
    ad, vd, td, pd = p["dropouts"]
    return ({"freeze_language_model": True, "text_hidden": th, "audio_hidden": ah,
             "vision_hidden": vh, "rank": p["rank"], "factor_lr": p["factor_lr"],
             "audio_dropout": ad, "vision_dropout": vd, "text_dropout": td,
             "post_fusion_dropout": pd, "loss": "l1"}, train_fields(p))


def ef_lstm(p: dict, dataset: str) -> tuple[dict, dict]:
    steps = ({"seq_len": 39, "audio_steps": 400, "vision_steps": 55} if dataset == "sims"
             else {"seq_len": 50})
    return ({"freeze_language_model": True, **steps, "hidden_dim": p["hidden_dims"],
             "num_layers": p["num_layers"], "dropout": p["dropout"], "loss": "l1"},
            train_fields(p))


def _memory_blocks(p: dict, blocks) -> dict:
    out = {}
    for key, block in blocks:
        out[f"{block}_hidden"] = p[key]["shapes"]
        out[f"{block}_dropout"] = float(p[key]["drop"])
    return out


def mfn(p: dict, dataset: str) -> tuple[dict, dict]:
    th, ah, vh = p["hidden_dims"]
    model = {"freeze_language_model": True, "seq_len": TEXT_LEN[dataset],
             "audio_vision_input": "time_average", "text_hidden": th, "audio_hidden": ah,
             "vision_hidden": vh, "mem_dim": p["memsize"]}
    model.update(_memory_blocks(p, (("NN1Config", "att1"), ("NN2Config", "att2"),
                                    ("gamma1Config", "gamma1"), ("gamma2Config", "gamma2"),
                                    ("outConfig", "out"))))
    return {**model, "loss": "l1"}, train_fields(p)


def graph_mfn(p: dict, dataset: str) -> tuple[dict, dict]:
    th, ah, vh = p["hidden_dims"]
    model = {"freeze_language_model": True, "seq_len": TEXT_LEN[dataset], "text_hidden": th,
             "audio_hidden": ah, "vision_hidden": vh, "mem_dim": p["memsize"],
             "inner_node_dim": p["inner_node_dim"]}
    model.update(_memory_blocks(p, (("NNConfig", "att2"), ("gamma1Config", "gamma1"),
                                    ("gamma2Config", "gamma2"), ("outConfig", "out"))))
    return {**model, "loss": "l1"}, train_fields(p)


def mlf_dnn(p: dict, dataset: str) -> tuple[dict, dict]:
    th, ah, vh = p["hidden_dims"]
    ad, vd, td = p["dropouts"]
    pt, pa, pv, pf = p["post_dropouts"]
    return ({"freeze_language_model": True, "text_hidden": th, "audio_hidden": ah,
             "vision_hidden": vh, "text_out": p["text_out"],
             "post_fusion_dim": p["post_fusion_dim"], "post_text_dim": p["post_text_dim"],
             "post_audio_dim": p["post_audio_dim"], "post_vision_dim": p["post_video_dim"],
             "audio_dropout": ad, "vision_dropout": vd, "text_dropout": td,
             "post_text_dropout": pt, "post_audio_dropout": pa, "post_vision_dropout": pv,
             "post_fusion_dropout": pf, "text_weight_decay": p["text_weight_decay"],
             "audio_weight_decay": p["audio_weight_decay"],
             "vision_weight_decay": p["video_weight_decay"],
             "loss_weights": "{" + ", ".join(f"{term}: {fmt(float(p[key]))}" for term, key in (
                 ("task", "M"), ("text", "T"), ("audio", "A"), ("vision", "V"))) + "}"},
            train_fields(p))


def mlmf(p: dict, dataset: str) -> tuple[dict, dict]:
    th, ah, vh = p["hidden_dims"]
    ad, vd, td = p["dropouts"]
    pt, pa, pv, pf = p["post_dropouts"]
    return ({"freeze_language_model": True, "text_hidden": th, "audio_hidden": ah,
             "vision_hidden": vh, "rank": p["rank"], "factor_lr": p["factor_lr"],
             "post_text_dim": p["post_text_dim"], "post_audio_dim": p["post_audio_dim"],
             "post_vision_dim": p["post_video_dim"], "audio_dropout": ad, "vision_dropout": vd,
             "text_dropout": td, "post_text_dropout": pt, "post_audio_dropout": pa,
             "post_vision_dropout": pv, "post_fusion_dropout": pf,
             "text_weight_decay": float(p["text_weight_decay"]),
             "audio_weight_decay": float(p["audio_weight_decay"]),
             "vision_weight_decay": float(p["video_weight_decay"]),
             "loss_weights": "{" + ", ".join(f"{term}: {fmt(float(p[key]))}" for term, key in (
                 ("task", "M"), ("text", "T"), ("audio", "A"), ("vision", "V"))) + "}"},
            train_fields(p))


#: TFR-Net's temporal transformers have the sequence lengths as embedding sizes, with 25 heads;
#: MMSA's SIMS lengths (39, 400, 55) are not multiples of 25 (its model cannot be built), so the
#: SIMS preset pads text to 50 and vision to 75 steps
TFR_NET_SEQ_LENS = {"sims": [50, 400, 75]}


def tfr_net(p: dict, dataset: str) -> tuple[dict, dict]:
    d, heads = p["dst_feature_dim_nheads"]
    weights = p["weight_gen_loss"]
    seq_lens = TFR_NET_SEQ_LENS.get(dataset, p["seq_lens"])
    return ({"freeze_language_model": not p["use_bert_finetune"],
             "seq_lens": "[" + ", ".join(str(n) for n in seq_lens) + "]",
             "embed_dim": d, "num_heads": heads, "nlevels": p["nlevels"],
             "num_temporal_head": p["num_temporal_head"],
             "conv_kernel_text": p["conv1d_kernel_size_l"],
             "conv_kernel_audio": p["conv1d_kernel_size_a"],
             "conv_kernel_vision": p["conv1d_kernel_size_v"],
             "text_dropout": p["text_dropout"], "attn_dropout": p["attn_dropout"],
             "attn_dropout_audio": p["attn_dropout_a"], "attn_dropout_vision": p["attn_dropout_v"],
             "relu_dropout": p["relu_dropout"], "embed_dropout": p["embed_dropout"],
             "res_dropout": p["res_dropout"], "attn_mask": p["attn_mask"],
             "fusion_text_hidden": p["fusion_t_hid"], "fusion_audio_hidden": p["fusion_a_hid"],
             "fusion_vision_hidden": p["fusion_v_hid"],
             "fusion_gru_layers": p["fusion_gru_layers"], "fusion_dropout": p["fusion_drop"],
             "cls_hidden": p["cls_hidden_dim"], "cls_dropout": p["cls_dropout"],
             "reconstruction_loss": p["recloss_type"],
             "weight_sim_loss": float(p["weight_sim_loss"]),
             "missing_rate": "[" + ", ".join(fmt(float(r)) for r in p["missing_rate"]) + "]",
             "missing_seed": p["missing_seed"][0],
             "loss_weights": "{task: 1.0, " + ", ".join(
                 f"reconstruction_{m}: {fmt(float(w))}"
                 for m, w in zip(("text", "audio", "vision"), weights)) + "}"},
            {"optimizer": "adam", "batch_size": p["batch_size"], "lr": p["learning_rate_other"],
             "lm_lr": p["learning_rate_bert"], "weight_decay": p["weight_decay_other"],
             "lm_weight_decay": p["weight_decay_bert"], "grad_clip_value": p["grad_clip"],
             "grad_accumulation": p["update_epochs"], "accumulation": "running_sum",
             "scheduler": "plateau", "plateau_factor": 0.1, "plateau_patience": p["patience"],
             "patience": p["early_stop"], "min_improvement": 1.0e-6,
             "selection_metric": "loss", "epochs": 1000})


MODELS = {
    "tfn": ("TFN", tfn, AVERAGED),
    "lmf": ("LMF", lmf, AVERAGED),
    "ef_lstm": ("EF-LSTM", ef_lstm, [
        NO_CAP,
        "MMSA reads fixed BERT features (the LM is frozen), word-aligned with audio/vision, padded "
        "to seq_len steps",
        "(MOSI/MOSEI aligned_50: 50; SIMS: text 39 steps, audio 400 and vision 55 average-pooled "
        "to 39)."]),
    "mfn": ("MFN", mfn, [
        NO_CAP,
        "MMSA reads fixed BERT features (the LM is frozen) padded to seq_len steps (MOSI/MOSEI "
        "aligned_50: 50;",
        "SIMS: 39), and audio/vision averaged over time, repeated at every step (need_normalized)."]),
    "graph_mfn": ("Graph-MFN", graph_mfn, [
        NO_CAP,
        "MMSA reads fixed BERT features (the LM is frozen) and audio/vision, word-aligned and "
        "padded to",
        "seq_len steps (MOSI/MOSEI aligned_50: 50; SIMS: 39)."]),
    "mlf_dnn": ("MLF-DNN", mlf_dnn, AVERAGED[:2] + [
        "steps; MMSA divides by its arrays' padded length (SIMS: audio 400, vision 55), which",
        "model.audio_average_steps / vision_average_steps reproduce. MMSA runs it on CH-SIMS only:",
        "four L1 terms on the human and the unimodal labels (labels_T/_A/_V)."]),
    "mlmf": ("MLMF", mlmf, AVERAGED[:2] + [
        "steps; MMSA divides by its arrays' padded length (SIMS: audio 400, vision 55), which",
        "model.audio_average_steps / vision_average_steps reproduce. MMSA runs it on CH-SIMS only:",
        "four L1 terms on the human and the unimodal labels (labels_T/_A/_V)."]),
    "tfr_net": ("TFR-Net", tfr_net, [
        NO_CAP,
        "MMSA fine-tunes BERT and pads every sequence to seq_lens steps (unaligned features; its",
        "datasetCommonParams); 20 % of the real steps of each modality are dropped in every split",
        "(missing_rate, model.missing_splits=all). Its loop: gradients summed over update_epochs",
        "batches with a step after each (train.accumulation=running_sum). SIMS: seq_lens padded",
        "to [50, 400, 75] (MMSA's [39, 400, 55] are not multiples of its 25 temporal heads)."]),
}


def preset_text(model: str, dataset: str, config: dict, tables: dict, commit: str) -> str:
    title, fields, notes = MODELS[model]
    full, language_model = DATASETS[dataset]
    shared = config["datasetCommonParams"][dataset].get("unaligned", {})  # seq_lens, missing_*
    params = {**shared, **config[model]["commonParams"], **config[model]["datasetParams"][dataset]}
    model_fields, train = fields(params, dataset)
    lines = [f"# {line}" for line in notes]
    lines += ["preset:", f"  description: {title} on {full} with MMSA's settings",
              f"  source: thuiar/MMSA@{commit} src/MMSA/config/config_regression.json ({model})"]
    row = tables[dataset].get(model)
    if row is not None:
        metrics = {k: round(float(v) / 100, 4) if k in ("MAE", "Corr") else float(v)
                   for k, v in row.items() if k not in ("Model", "Data Setting")}
        inner = ", ".join(f"{k}: {fmt(v)}" for k, v in metrics.items())
        lines += ["  paper:",
                  f"    citation: MMSA v2.2.1 reproduction, results/result-stat.md ({full}, "
                  f"{row['Data Setting'].lower()} features)",
                  f"    metrics: {{{inner}}}",
                  "    note: MMSA's own reproduction of the model (not the paper's table), on "
                  "MMSA's feature",
                  "      files; MMSA's runner keeps the checkpoint of the lowest validation loss"]
    lines += ["model:", f"  language_model: {language_model}"]
    lines += [f"  {k}: {fmt(v)}" for k, v in model_fields.items()]
    lines += ["train:"] + [f"  {k}: {fmt(v)}" for k, v in train.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("models", nargs="+", choices=sorted(MODELS))
    args = parser.parse_args()
    commit = official_commit(args.official)
    config = json.loads((args.official / "src/MMSA/config/config_regression.json").read_text())
    tables = result_tables((args.official / "results/result-stat.md").read_text())
    for model in args.models:
        for dataset in DATASETS:
            if dataset not in config[model]["datasetParams"]:
                continue  # MMSA has no setting (e.g. its multi-task models: CH-SIMS only)
            path = REPO_ROOT / "src/msakit/configs/presets" / model / f"{dataset}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(preset_text(model, dataset, config, tables, commit))
            print(path)


if __name__ == "__main__":
    main()
