"""Write the presets of msakit's MMSA ports from MMSA's own files (run by hand, never in CI).

    python tools/make_mmsa_presets.py --official /path/to/MMSA tfn lmf ef_lstm mfn graph_mfn mfm bert_mag

For each model and dataset (MOSI, MOSEI, SIMS) it reads MMSA's settings from
``src/MMSA/config/config_regression.json`` and MMSA's reproduced test numbers from
``results/result-stat.md`` (MAE and Corr there are x100: stored as fractions; for a model
without a row there, the paper's figures of ``PAPER_FIGURES``), and writes
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
            "sims": ("CH-SIMS", "bert-base-chinese"),
            "simsv2": ("CH-SIMS v2", "bert-base-chinese")}
#: the datasets of a model's presets where not MOSI, MOSEI and SIMS (MMSA's settings permitting)
MODEL_DATASETS = {"mtfn": ("sims", "simsv2"), "tetfn": ("mosi", "mosei", "sims", "simsv2")}
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


def mfm(p: dict, dataset: str) -> tuple[dict, dict]:
    th, ah, vh = p["hidden_dims"]
    model = {"freeze_language_model": True, "seq_len": TEXT_LEN[dataset], "text_hidden": th,
             "audio_hidden": ah, "vision_hidden": vh, "mem_dim": p["memsize"]}
    model.update(_memory_blocks(p, (("NN1Config", "att1"), ("NN2Config", "att2"),
                                    ("gamma1Config", "gamma1"), ("gamma2Config", "gamma2"),
                                    ("outConfig", "out"))))
    model["run_unused_mfn_head"] = True
    model.update({k: p[k] for k in ("zy_size", "zl_size", "za_size", "zv_size", "fy_size",
                                    "fl_size", "fa_size", "fv_size")})
    model.update({k: float(p[k]) for k in ("zy_to_fy_dropout", "zl_to_fl_dropout",
                                           "za_to_fa_dropout", "zv_to_fv_dropout",
                                           "fy_to_y_dropout")})
    model["loss"] = "l1"
    model["loss_weights"] = (
        f"{{task: 1.0, text_reconstruction: {fmt(float(p['lda_xl']))}, audio_reconstruction: "
        f"{fmt(float(p['lda_xa']))}, vision_reconstruction: {fmt(float(p['lda_xv']))}, mmd: "
        f"{fmt(float(p['lda_mmd']))}}}")
    # MMSA's MFM trainer builds Adam(parameters, weight_decay=...) without its learning_rate
    return model, {**train_fields(p), "lr": 1.0e-3}


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


def mtfn(p: dict, dataset: str) -> tuple[dict, dict]:
    model, train = mlf_dnn(p, dataset)
    # MMSA's MTFN trainer builds Adam without its weight_decay
    return ({**model, "output_bound": 3.0}, train_fields(p, weight_decay=False))


def cenet(p: dict, dataset: str) -> tuple[dict, dict]:
    train = train_fields(p)
    train.update({"lm_lr": p["learning_rate"], "lm_weight_decay": float(p["weight_decay"]),
                  "grad_clip_norm": float(p["max_grad_norm"])})
    return ({"injection_layer": 1, "attention_scale": 8.0, "train_embeddings": False,
             "loss": "l1", "adam_epsilon": p["adam_epsilon"]}, train)


def mmim(p: dict, dataset: str) -> tuple[dict, dict]:
    model = {"freeze_language_model": not p["use_finetune"], "audio_hidden": p["d_ah"],
             "vision_hidden": p["d_vh"], "audio_out": p["d_aout"], "vision_out": p["d_vout"],
             "bidirectional": p["bidirectional"], "fusion_hidden": p["d_prjh"],
             "fusion_dropout": p["dropout_prj"], "cpc_layers": p["cpc_layers"],
             "cpc_activation": p["cpc_activation"],
             "mmilb_activation": p["mmilb_mid_activation"], "add_va": p["add_va"],
             "contrast": p["contrast"], "memory_size": p["mem_size"],
             "mmilb_lr": p["lr_mmilb"], "mmilb_weight_decay": p["weight_decay_mmilb"]}
    if dataset == "mosei":  # trains/singleTask/MMIM.py: train_mmilb stops half-way on MOSEI
        model["mmilb_batch_fraction"] = 0.5
    model["loss_weights"] = (f"{{task: 1.0, cpc: {fmt(float(p['alpha']))}, mmilb: "
                             f"{fmt(float(p['beta']))}, entropy: {fmt(float(p['beta']))}}}")
    train = {"optimizer": p["optim"].lower(), "batch_size": p["batch_size"],
             "lr": p["lr_main"], "weight_decay": p["weight_decay_main"], "lm_lr": p["lr_bert"],
             "lm_weight_decay": p["weight_decay_bert"], "grad_clip_norm": p["grad_clip"],
             "scheduler": "plateau", "plateau_factor": 0.5, "plateau_patience": p["when"],
             "patience": p["early_stop"], "min_improvement": 1.0e-6,
             "selection_metric": "loss", "epochs": 1000}
    return model, train


def bert_mag(p: dict, dataset: str) -> tuple[dict, dict]:
    # one Adam over every parameter, the LM included: lm_lr = lr, no weight decay anywhere
    train = train_fields(p)
    train.update(lm_lr=train["lr"], lm_weight_decay=train["weight_decay"])
    order = ["optimizer", "batch_size", "lr", "lm_lr", "weight_decay", "lm_weight_decay"]
    return ({"beta_shift": float(p["beta_shift"]), "gate_dropout": p["dropout_prob"],
             "loss": "l1"}, {k: train[k] for k in order + [k for k in train if k not in order]})


#: The papers' figures for models MMSA's results/result-stat.md has no row of:
#: {model: (citation, note, {dataset: metrics})}
PAPER_FIGURES = {
    "bert_mag": (
        "Rahman et al., ACL 2020, Table 1 (MAG-BERT), as quoted in the SAGE-Net and MMILN\n"
        "      suites' tables (../shared/papers/000, 001)",
        "MMSA's results/result-stat.md has no bert_mag row; these are the paper's figures",
        {"mosi": {"Has0_acc_2": 84.2, "Non0_acc_2": 86.1, "Has0_F1_score": 84.1,
                  "Non0_F1_score": 86.0, "MAE": 0.712, "Corr": 0.796},
         "mosei": {"Has0_acc_2": 84.7, "Has0_F1_score": 84.5}}),
}

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


def mctn(p: dict, dataset: str) -> tuple[dict, dict]:
    return ({"freeze_language_model": not p["use_bert"], "seq_len": p["max_seq_len"],
             "hidden": p["hid_dim"], "dropout": 0.0, "recurrence": "time",
             "teacher_forcing_ratio": 0.5, "loss": "l1",
             "loss_weights": "{task: 1.0, text_to_vision: 0.1, vision_to_text: 0.1, "
             "joint_to_audio: 0.1}"},
            {"optimizer": "adam", "batch_size": p["batch_size"], "lr": p["init_lr"],
             "weight_decay": 0.0, "grad_clip_norm": p["grad_clip"], "patience": p["early_stop"],
             "min_improvement": 1.0e-6, "selection_metric": "loss", "epochs": 1000})


def tetfn(p: dict, dataset: str) -> tuple[dict, dict]:
    # need_data_aligned: MOSI/MOSEI's aligned_50 arrays; SIMS has unaligned ones only
    steps = (50, 50, 50) if dataset in ("mosi", "mosei") else p["seq_lens"]
    model = {"embed_dim": p["dst_feature_dims"], "num_heads": p["nheads"]}
    for m, k in (("audio", "a"), ("vision", "v")):
        model.update({f"{m}_lstm_hidden": p[f"{k}_lstm_hidden_size"],
                      f"{m}_lstm_layers": p[f"{k}_lstm_layers"],
                      f"{m}_lstm_dropout": float(p[f"{k}_lstm_dropout"])})
    model.update({"conv_kernel_text": p["conv1d_kernel_size_l"],
                  "conv_kernel_audio": p["conv1d_kernel_size_a"],
                  "attn_dropout": p["attn_dropout"], "attn_dropout_audio": p["attn_dropout_a"],
                  "attn_dropout_vision": p["attn_dropout_v"], "relu_dropout": p["relu_dropout"],
                  "embed_dropout": p["embed_dropout"], "res_dropout": p["res_dropout"]})
    for m, k in (("fusion", "fusion"), ("text", "text"), ("audio", "audio"),
                 ("vision", "video")):
        model[f"post_{m}_dim"] = p[f"post_{k}_dim"]
    for m, k in (("fusion", "fusion"), ("text", "text"), ("audio", "audio"),
                 ("vision", "video")):
        model[f"post_{m}_dropout"] = float(p[f"post_{k}_dropout"])
    model.update({"label_limit": float(p["H"]), "exclude_zero": p["excludeZero"],
                  "text_attended_steps": steps[0], "audio_attended_steps": steps[1],
                  "vision_attended_steps": steps[2],
                  "audio_lr": p["learning_rate_audio"],
                  "audio_weight_decay": float(p["weight_decay_audio"]),
                  "vision_lr": p["learning_rate_video"],
                  "vision_weight_decay": float(p["weight_decay_video"]),
                  "exempt_biases_from_decay": False})
    train = {"optimizer": "adam", "batch_size": p["batch_size"],
             "grad_accumulation": p["update_epochs"], "accumulation": "sum",
             "partial_accumulation": "drop", "min_improvement": 1.0e-6,
             "patience": p["early_stop"], "selection_metric": "loss", "epochs": 1000,
             "lr": p["learning_rate_other"], "weight_decay": float(p["weight_decay_other"]),
             "lm_lr": p["learning_rate_bert"], "lm_weight_decay": float(p["weight_decay_bert"])}
    return model, train


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
    "mfm": ("MFM", mfm, [
        NO_CAP,
        "MMSA reads fixed BERT features (the LM is frozen) and audio/vision, word-aligned and "
        "padded to",
        "seq_len steps (MOSI/MOSEI aligned_50: 50; SIMS: 39). lr 1e-3 is what MMSA's runs used: "
        "its MFM",
        "trainer builds Adam(model.parameters(), weight_decay=...) without the configured "
        "learning_rate",
        "(MOSI 0.002, MOSEI 0.001, SIMS 0.002), so Adam runs at its default 1e-3 "
        "(src/MMSA/trains/singleTask/MFM.py).",
        "MFM is not in MMSA's results/result-stat.md: no reproduced figures to compare with."]),
    "mlf_dnn": ("MLF-DNN", mlf_dnn, AVERAGED[:2] + [
        "steps; MMSA divides by its arrays' padded length (SIMS: audio 400, vision 55), which",
        "model.audio_average_steps / vision_average_steps reproduce. MMSA runs it on CH-SIMS only:",
        "four L1 terms on the human and the unimodal labels (labels_T/_A/_V)."]),
    "mlmf": ("MLMF", mlmf, AVERAGED[:2] + [
        "steps; MMSA divides by its arrays' padded length (SIMS: audio 400, vision 55), which",
        "model.audio_average_steps / vision_average_steps reproduce. MMSA runs it on CH-SIMS only:",
        "four L1 terms on the human and the unimodal labels (labels_T/_A/_V)."]),
    "mtfn": ("MTFN", mtfn, AVERAGED[:2] + [
        "steps; MMSA divides by its arrays' padded length (SIMS: audio 400, vision 55), which",
        "model.audio_average_steps / vision_average_steps reproduce. MMSA runs it on CH-SIMS and",
        "CH-SIMS v2: four L1 terms on the human and the unimodal labels (labels_T/_A/_V). Its",
        "config's weight_decay is never passed to Adam by its MTFN trainer: 0 here."]),
    "cenet": ("CENET", cenet, [
        NO_CAP,
        "MMSA fine-tunes BERT (one learning rate and weight decay for BERT, the CE block and the "
        "head). Its CE",
        "attends to every step of its zero-padded arrays (unaligned MOSI/MOSEI: audio 500, vision "
        "375; SIMS:",
        "400, 55); msakit masks the padding, model.audio_attended_steps / vision_attended_steps "
        "reproduce MMSA."]),
    "mmim": ("MMIM", mmim, [
        NO_CAP,
        "MMSA fine-tunes BERT (use_finetune). Every epoch: the MMILB pass (its own Adam, "
        "model.mmilb_*),",
        "then the main pass; the main lr halves after `when` epochs without a lower validation "
        "loss.",
        "MMIM is not in MMSA's results/result-stat.md: no reproduced figures to compare with."]),
    "bert_mag": ("MAG-BERT", bert_mag, [
        NO_CAP,
        "MMSA trains MAG-BERT on its aligned features (need_data_aligned): in msakit, word-aligned",
        "data (audio/vision rows repeated per sub-word token); one Adam over every parameter."]),
    "tfr_net": ("TFR-Net", tfr_net, [
        NO_CAP,
        "MMSA fine-tunes BERT and pads every sequence to seq_lens steps (unaligned features; its",
        "datasetCommonParams); 20 % of the real steps of each modality are dropped in every split",
        "(missing_rate, model.missing_splits=all). Its loop: gradients summed over update_epochs",
        "batches with a step after each (train.accumulation=running_sum). SIMS: seq_lens padded",
        "to [50, 400, 75] (MMSA's [39, 400, 55] are not multiples of its 25 temporal heads)."]),
    "mctn": ("MCTN", mctn, [
        NO_CAP + " MMSA configures",
        "MCTN for CMU-MOSI only, and its results/result-stat.md has no MCTN figures. MMSA reads "
        "fixed BERT",
        "features (the LM is frozen) of word-aligned data (need_data_aligned) padded to "
        "max_seq_len steps.",
        "This preset runs the corrected model (model.recurrence: time, teacher_forcing_ratio: "
        "0.5, the ratio",
        "MMSA passes); MMSA's code itself, the mode that reproduces MMSA's numbers, is",
        "model.recurrence=mmsa_batch_axis model.teacher_forcing_ratio=1.0 (its LSTMs run over the "
        "batch axis",
        "and its decoders always read the target). MMSA selects on the validation total loss "
        "(translations",
        "included); msakit on the validation task loss."]),
    "tetfn": ("TETFN", tetfn, [
        NO_CAP,
        "MMSA fine-tunes BERT and reads its fixed-length arrays padding included",
        "(model.*_attended_steps: MOSI/MOSEI aligned_50: 50 each; SIMS: text 39, audio 400 and",
        "vision 55 average-pooled to 39; null reads the real steps only). MMSA builds the vision",
        "conv with the audio kernel (conv_kernel_vision: null). Its loop, as Self-MM's: the losses",
        "of update_epochs batches summed per step, an epoch's partial window dropped."]),
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
    figures = PAPER_FIGURES.get(model)
    if row is None and figures is not None and dataset in figures[2]:
        citation, note, by_dataset = figures
        inner = ", ".join(f"{k}: {fmt(v)}" for k, v in by_dataset[dataset].items())
        lines += ["  paper:", f"    citation: {citation}", f"    metrics: {{{inner}}}",
                  f"    note: {note}"]
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
        for dataset in MODEL_DATASETS.get(model, ("mosi", "mosei", "sims")):
            if dataset not in config[model]["datasetParams"]:
                continue  # MMSA has no setting (e.g. its multi-task models: CH-SIMS only)
            path = REPO_ROOT / "src/msakit/configs/presets" / model / f"{dataset}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(preset_text(model, dataset, config, tables, commit))
            print(path)


if __name__ == "__main__":
    main()
