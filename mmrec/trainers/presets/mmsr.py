"""MMSR's presets (docs/fidelity/mmsr.md).

The paper (arXiv 2403.17372) reachable here is a summary that states no hyper-parameter, so ``paper``
falls back to the code everywhere ("paper silent; code: ..."). The code's settings are
``setup_mm.py`` (the launcher) over ``parameters.py`` (argparse defaults). ``paper`` and ``code`` differ
in nothing that mmrec can express: the code's bugs (encoders frozen by ``index > 164`` instead of
fine-tuned top blocks; ViT-MAE's random 75 % patch masking at every forward) concern the encoders,
which mmrec keeps frozen in its feature store (a named difference, not a flag).
"""

from mmrec.trainers.presets import S, paper_from_code

C = "MMSR23/MMSR@63a6d51"

_CODE = {
    # the item side: encoders' token states -> Linear -> merged attention over all tokens
    "model.feature_tokens": S(True, f"{C} model/model.py:89-106 (merge_attn gets the text and image token states)"),
    "model.modality_norm": S(True, f"{C} model/text_encoders.py:30, model/img_encoders.py:24 (the projections read "
                                   "RoBERTa's/ViT-MAE's last_hidden_state, the output of their last LayerNorm)"),
    "model.fusion": S("merged_attention", f"{C} setup_mm.py:58 (fusion = \"merge_attn\")"),
    "model.adaptor": S("linear", f"{C} model/text_encoders.py:14 (text_pooler), model/img_encoders.py:16 (cv_proj)"),
    "model.fusion_heads": S(12, f"{C} model/model.py:81 (MergedAttention.from_pretrained(\"bert-base-uncased\"): 12 heads)"),
    "model.fusion_act": S("gelu", f"{C} model/modeling.py:189,402 (BertConfig, BertIntermediate, bert-base hidden_act gelu)"),
    "model.fusion_type_embedding": S(False, f"{C} model/modeling.py:821-834 (token-type embeddings computed, the "
                                            "raw features concatenated)"),
    "model.fusion_gain": S(1.0, f"{C} model/modeling.py:531-533 (init_bert_weights: LayerNorm weight 1)"),
    "model.feature_dropout": S(0.1, f"{C} model/modeling.py (bert-base hidden/attention dropout 0.1 in the fusion "
                                    "block)"),
    "model.adaptor_dropout": S(0.0, f"{C} model/text_encoders.py:29-30, model/img_encoders.py:23-24 (text_pooler / "
                                    "cv_proj read the encoders' last_hidden_state directly: no dropout before them)"),
    # the sequence side
    "model.backbone": S("sasrec", f"{C} setup_mm.py:60 (benchmark_list = ['sasrec'])"),
    "model.hidden": S(768, f"{C} setup_mm.py:54 (embedding_dim_list = [768])"),
    "model.layers": S(2, f"{C} parameters.py:48 (transformer_block 2)"),
    "model.heads": S(2, f"{C} parameters.py:47 (num_attention_heads 2)"),
    "model.inner": S(3072, f"{C} model/modules.py:85 (d_inner = d_model * 4)"),
    "model.dropout": S(0.1, f"{C} setup_mm.py:51 (drop_rate_list = [0.1])"),
    "model.attn_dropout": S(0.1, f"{C} model/modules.py:48 (SelfAttention dropout = drop_rate)"),
    "model.act": S("relu", f"{C} model/modules.py:12 (PositionwiseFeedForward: nn.ReLU())"),
    "model.attn_bias": S(False, f"{C} model/modules.py:43-46 (w_Q, w_K, w_V, fc: bias=False)"),
    "model.backbone_eps": S(1e-6, f"{C} model/modules.py:10,50,83 (nn.LayerNorm(d_model, eps=1e-6))"),
    "model.position": S("reverse", f"{C} data_utils/dataset.py:51 (left padding; positions 0..L-1 from the left)"),
    # training
    "train.loss": S("bce", f"{C} model/model.py:85,145-155 (BCEWithLogitsLoss on positive and negative scores)"),
    "train.negatives": S(1, f"{C} data_utils/dataset.py:57-62 (one uniform negative per position, not in the sequence)"),
    "train.optimizer": S("adamw", f"{C} run.py:354 (optim.AdamW)"),
    "train.lr": S(1e-4, f"{C} setup_mm.py:53 (lr_list = [1e-4])"),
    "train.weight_decay": S(0.1, f"{C} setup_mm.py:50 (l2_weight_list = [0.1], the recommender's group, biases and "
                                 "LayerNorms included)"),
    "train.batch_size": S(512, f"{C} setup_mm.py:52,76 (batch_size_list = [64] per GPU x 8 GPUs)"),
    "train.max_len": S(20, f"{C} setup_mm.py:55 (max_seq_len_list = [20])"),
    "train.windows": S("last", f"{C} data_utils/dataset.py:45-51 (one sample per user: its last max_seq_len + 1 "
                               "training items, every position a target)"),
    "train.epochs": S(150, f"{C} setup_mm.py:47 (epoch = 150)"),
    "train.lr_schedule": S("step", f"{C} parameters.py:69 (scheduler step_schedule)"),
    "train.lr_step_epochs": S(120, f"{C} setup_mm.py:62 (scheduler_steps = 120; stepped per epoch, run.py:525)"),
    "train.lr_gamma": S(0.1, f"{C} data_utils/lr_decay.py:61 (pow(0.1, step))"),
    "train.warmup_steps": S(0, f"{C} run.py:413 (warmup_steps = 0)"),
    "train.valid_metric": S("hr@10", f"{C} run.py:83 (if valid_Hit10 > max_eval_value)"),
    "train.select_on": S("valid", f"{C} run.py:509-512 (selection on users_valid)"),
    "train.eval_every": S(5, f"{C} run.py:507 (now_epoch % 5 == 0)"),
    "train.patience": S(150, f"{C} run.py:316,322 (is_early_stop = False: no early stop; the counter only logs)"),
    "train.mixed_precision": S("fp16", f"{C} run.py:489 (autocast + GradScaler)"),
    "train.seed": S(123456, f"{C} run.py:563 (setup_seed(123456))"),
    # evaluation
    "eval.mode": S("full", f"{C} data_utils/metrics.py:281 (scores against every item)"),
    "eval.history_mask": S("whole", f"{C} data_utils/metrics.py:284-285 (score[history] = -inf; history = every "
                                    "earlier item of the kept window; the code masks a repeated target too)"),
    "eval.ks": S([10], f"{C} data_utils/metrics.py:262 (Hit10, nDCG10)"),
    # the data
    "prepare.split": S("loo", f"{C} data_utils/tools.py:72-74 (train seq[:-2], valid seq[-2], test seq[-1])"),
    "prepare.max_seq_len": S(23, f"{C} data_utils/tools.py:40 (history[-(max_seq_len + 3):])"),
    "prepare.min_user_interactions": S(5, f"{C} parameters.py:44 (min_seq_len 5), tools.py:38"),
    "prepare.min_item_interactions": S(1, f"{C} data_utils/tools.py (no item filter beyond occurrence)"),
}


PRESETS = {
    "paper": paper_from_code(_CODE, {}),
    "code": dict(_CODE),
}
