"""ODMT presets (Ji et al., ACM MM 2023; xyliugo/ODMT@3d2ba25, the Arts run script ``run_arts.py``).

``paper``: what the paper states, the code where it is silent. The paper's text beyond the abstract
and a review summary could not be retrieved (docs/fidelity/odmt.md), so most values say "paper
silent; code: ...". ``code``: the released code's settings, its behaviours behind mmrec's flags
(bench/side_by_side_odmt.py reproduces it to 1e-5 with these model settings).

Features (not ``--set`` keys; the feature store entries the run names): the code keeps all 30 token
states of BERT-base-uncased's last layer per title (``num_words_title``, padding tokens masked) and
all 50 token states of CLIP ViT-B/32's vision tower per image, token 0 being the class token
(``code/model/feature_extractors.py``, ``code/utils/parameters.py:51``). Hidden 768 and those token
sequences do not fit a 2-core CPU: the values are kept here, and scaled down with ``--set``.
"""

from mmrec.trainers.presets import PAPER_SILENT, S, silent

C = "xyliugo/ODMT@3d2ba25"

_CODE = {
    # -- model ---------------------------------------------------------------------------------------
    "model.hidden": S(768, f"{C} code/run_arts.py:34 (embedding_dim_list = [768])"),
    "model.inner": S(3072, f"{C} code/model/modules.py:160,194 (d_inner = d_model * 4)"),
    "model.layers": S(2, f"{C} code/utils/parameters.py:66 (transformer_block 2)"),
    "model.heads": S(2, f"{C} code/utils/parameters.py:65 (num_attention_heads 2)"),
    "model.imt_layers": S(2, f"{C} code/run_arts.py:37 (merged_att_layers 2)"),
    "model.imt_heads": S(2, f"{C} code/model/modules.py:184 (n_heads = merged_att_layers)"),
    "model.dropout": S(0.1, f"{C} code/utils/parameters.py:30 (drop_rate 0.1)"),
    "model.attn_dropout": S(0.1, f"{C} code/model/modules.py:85,91 (dropout on the attention weights = drop_rate)"),
    "model.act": S("relu", f"{C} code/model/modules.py:73 (nn.ReLU)"),
    "model.position": S("reverse", f"{C} code/utils/dataset.py:147-151 (left padding, positions 0..S-1)"),
    "model.mask": S(True, f"{C} code/run_arts.py:32 (version v1) -> code/model/modules.py:239"),
    "model.id_init": S("mean", f"{C} code/run_arts.py:38 (init 1) -> code/model/model.py:91-92"),
    "model.id_dim": S(768, f"{C} code/model/model.py:60-64 (id_embedding_dim 768 table, then id_proj)"),
    "model.attn_bias": S(False, f"{C} code/model/modules.py:104-107 (w_Q, w_K, w_V, fc: bias=False)"),
    "model.debias": S(True, f"{C} code/model/model.py:118 (logits - log p)"),
    "model.in_batch_mask": S("window", f"{C} code/model/model.py:157-164,124 (unused_item_mask)"),
    "model.first_item_candidates": S(True, f"{C} code/model/model.py:114-123 (logits over all B x (S+1) item slots)"),
    "model.candidates": S("positions", f"{C} code/model/model.py:114-116 (one column per slot)"),
    "model.distill": S(True, f"{C} code/model/model.py:202-206"),
    "model.temperature": S(0.3, f"{C} code/run_arts.py:36 (tau 0.3)"),
    "model.rampup": S(20.0, f"{C} code/run_arts.py:36 (alpha 20) -> code/model/model.py:195"),
    "model.detach_teacher": S(False, f"{C} code/model/model.py:202-206 (kd_ce_loss, no detach)"),
    "model.inference": S("ensemble", f"{C} code/utils/metrics.py:300 ((id + t + v) / 3)"),
    # -- training ------------------------------------------------------------------------------------
    "train.loss": S("ce", f"{C} code/model/model.py:197-201 (debiased in-batch cross-entropy)"),
    "train.optimizer": S("adamw", f"{C} code/main.py:268 (optim.AdamW)"),
    "train.lr": S(1e-4, f"{C} code/run_arts.py:30"),
    "train.weight_decay": S(0.1, f"{C} code/utils/parameters.py:31 (every parameter)"),
    "train.lr_schedule": S("constant", f"{C} code/main.py:268-280 (no scheduler; utils/lr_decay.py unused)"),
    "train.warmup_steps": S(0, f"{C} code/main.py (no warm-up)"),
    "train.grad_clip": S(5.0, f"{C} code/main.py:396-397 (clip_grad_norm_ max_norm=5)"),
    "train.batch_size": S(256, f"{C} code/utils/parameters.py:27 with run_arts.py:25 (128 per GPU on two "
                               "GPUs: one step per 256 users; the code's in-batch candidates are each GPU's 128)"),
    "train.max_len": S(12, f"{C} code/utils/dataset_config.py:36 (max_seq_len 12, Amazon)"),
    "train.windows": S("last", f"{C} code/utils/dataset.py:142-162 (one sample per user: its whole "
                              "training part, at most 13 items)"),
    "train.epochs": S(30, f"{C} code/run_arts.py:31 (epoch 31) with code/main.py:316 (evaluated at the "
                          "start of epochs 2..31: the models after epochs 1..30)"),
    "train.patience": S(30, f"{C} code/main.py:217,222 (is_early_stop = False: no early stop)"),
    "train.valid_metric": S("hr@10", f"{C} code/main.py:504 (valid_Hit10 > max_eval_value)"),
    "train.select_on": S("valid", f"{C} code/main.py:316-343 (max over validation HR@10)"),
    "train.eval_every": S(1, f"{C} code/main.py:316 ((now_epoch - 1) % 1 == 0)"),
    "train.loss_weighting": S("batch", f"{C} code/main.py:388-393 (the batch mean loss, one step per batch)"),
    "train.bucket_batches": S(False, f"{C} code/main.py:242,251-259 (DistributedSampler: users shuffled, no length buckets)"),
    "train.mixed_precision": S("fp16", f"{C} code/main.py:387 (autocast, GradScaler)"),
    "train.seed": S(1, f"{C} code/run_arts.py:29 (seed 1, + rank)"),
    # -- evaluation ----------------------------------------------------------------------------------
    "eval.mode": S("full", f"{C} code/utils/metrics.py:297-300 (every item scored)"),
    "eval.history_mask": S("whole", f"{C} code/utils/metrics.py:306-312, code/utils/load_data.py:161-162"),
    "eval.ks": S([10], f"{C} code/utils/metrics.py:263 (topK = 10)"),
    # -- data ----------------------------------------------------------------------------------------
    "prepare.split": S("loo", f"{C} code/utils/load_data.py:150-152 (train [:-2], valid [-2], test [-1])"),
    "prepare.min_user_interactions": S(5, f"{C} code/utils/parameters.py:62, code/utils/load_data.py:109"),
    "prepare.min_item_interactions": S(1, f"{C} code/utils/load_data.py:123-130 (no item filter)"),
    "prepare.kcore_iterative": S(False, f"{C} code/utils/load_data.py:109 (one pass over users)"),
    "prepare.max_seq_len": S(15, f"{C} code/utils/load_data.py:111 (the last max_seq_len + 3 events)"),
}


def _paper(key: str) -> S:
    v = _CODE[key]
    return S(v.value, silent(v.source))


# what the paper (abstract; review summary) states; the rest falls back to the code
_PAPER_STATES = {
    "model.mask": S(True, "paper abstract/Sec. 3: IMT with 'a modified attention mask' letting ID "
                          "features attend to modality features, not the reverse"),
    "model.id_init": S("mean", "paper: ID embeddings initialised with 'averaged modality features'"),
    "model.debias": S(True, "paper Sec. 3: 'debiased in-batch cross-entropy loss'"),
    "model.distill": S(True, "paper abstract: 'online distillation training strategy'"),
    "model.inference": S("ensemble", "paper: ID, text and image predictions combined ('multi-faceted "
                                     "predictions'); code: code/utils/metrics.py:300 ((id + t + v) / 3)"),
    "eval.ks": S([10], "paper: 'Recall@10 and NDCG@10'"),
    "eval.mode": S("full", PAPER_SILENT + f"{C} code/utils/metrics.py:297-300 (every item scored)"),
}

PRESETS = {
    "paper": {k: _PAPER_STATES.get(k) or _paper(k) for k in _CODE if k != "model.candidates"},
    "code": dict(_CODE),
}
