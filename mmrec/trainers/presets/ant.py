"""ANT presets (docs/fidelity/ant.md). Two stages, so four presets:

- ``code`` / ``paper``: the target task (``model.objective=target``), re-learning from a pre-training
  run (``model.init_from=RUN_DIR``, which the user adds: a run folder is not a preset value);
- ``code_pretrain`` / ``paper_pretrain``: pre-training on the merged auxiliary datasets
  (``model.objective=pretrain``; ``mmrec data merge`` / ``mmrec features merge``).

``code`` is ninglab/ANT@d125b5a as released (``finetune.py`` / ``pretrain.py`` over
``props/ANT.yaml`` and ``models/ANT.py``), its artefacts behind their flags. ``paper`` is what the paper
(arXiv 2309.10195) states, else the code ("paper silent; code: ..."). The stored copy of the paper is
a summary: it states the modalities (BERT texts, SWIN images, sinusoidal prices), whitening + MoE with
Gaussian routing, and re-learning "position embeddings and item representation parameters from
scratch while keeping the user intent model fixed"; every number falls back to the code.

Learning-rate decay: the code's ``StepLR(step_size=1, gamma)`` is returned from Lightning's
``configure_optimizers`` without an interval, so it steps once per epoch: ``train.lr_schedule=step``,
``train.lr_step_epochs=1``, ``train.lr_gamma`` (0.99 target, 0.995 pre-training); ``model.lr_decay``
stays 1.0 (it would compound with the schedule).

Not expressible as a setting: the code keeps the pre-training checkpoint of minimum *training* loss
(``pretrain.py:111-115``, no validation); mmrec selects on its validation metric. The paper's sizes
(hidden 256, batch 2048, 768/1024-d features) are kept; scale them down with ``--set`` for CPU runs.
"""

from mmrec.trainers.presets import S, paper_from_code

C = "ninglab/ANT@d125b5a"
_A = f"{C} models/ANT.py"
_Y = f"{C} props/ANT.yaml"
_F = f"{C} finetune.py"
_P = f"{C} pretrain.py"
_D = f"{C} dataset/Pretrain.py"
_R = f"{C} README.md"
_LIGHTNING = "(Lightning 1.7.7's default scheduler interval 'epoch': stepped once per epoch)"


# settings both stages share (the code's pretrain.py and finetune.py read the same yaml and model)
_SHARED: dict[str, S] = {
    # --- protocol (prepared dataset; informational) ---
    "prepare.split": S("loo", f"{_R}:15 (UniSRec's processing: train = items[:-2], valid [-2], test [-1]; "
                              ".train/.valid/.test.inter files, dataset/Pretrain.py:10-38)"),
    "prepare.min_user_interactions": S(5, f"{_R}:15 (built on UniSRec's scripts: process_amazon.py --user_k 5)"),
    "prepare.min_item_interactions": S(5, f"{_R}:15 (UniSRec's process_amazon.py --item_k 5)"),
    "prepare.kcore_iterative": S(True, f"{_R}:15 (UniSRec's iterative 5-core filter)"),
    "prepare.features_text": S("BERT 768-d per item (UniSRec's text recipe, [CLS] of title/category/brand; "
                               "the recipe is not released)", f"{_D}:101 (text_0.feat reshaped to 768)"),
    "prepare.features_image": S("SWIN (base) 1024-d, the mean of each item's non-zero image rows (up to 4)",
                                f"{_D}:102,123-127 (img_0_4.feat [N, 4, 1024]; weight2emb averages the non-zero rows); "
                                f"{_P}:23,25 (--image_model SWIN, --image_dim 1024)"),
    "prepare.features_price": S("64-d sinusoidal code of the price (formula not released)",
                                f"{_D}:103 (price_0.feat reshaped to 64)"),
    "prepare.feature_dtype": S("float16", f"{_D}:124 (weight2emb: weight.astype(np.float16))"),
    # --- model: items ---
    "model.n_experts": S(8, f"{_Y}:7 (n_exps : 8)"),
    "model.adaptor_dropout": S(0.2, f"{_Y}:13 (adaptor_dropout_prob : 0.2)"),
    "model.gate_noise": S(True, f"{_Y}:9 (noise : True); {C} models/modules.py:70-80 (mean + randn * std in training)"),
    "model.fusion_lambda": S(0.1, f"{_F}:24 (--fusion_lam 0.1); {_R}:31-33"),
    "model.interaction_missing": S("missing_vector", f"{_A}:175-209 (an item without an image feeds a zero feature "
                                                     "through the experts, a learned constant, and keeps img * text)"),
    "model.mode": S("inductive", f"{_F}:28,87-88 (--mode finetune_inductive: no item id embedding)"),
    "model.temperature": S(0.07, f"{_Y}:5 (temperature : 0.07)"),
    # --- model: sequence encoder ---
    "model.hidden": S(256, f"{_Y}:8 (hidden_size : 256)"),
    "model.inner": S(256, f"{_A}:108 (inner_size=config['hidden_size'])"),
    "model.layers": S(2, f"{_Y}:17 (n_layers_rec : 2); {_F}:36 (--n_layers_rec 2)"),
    "model.heads": S(2, f"{_Y}:18 (n_heads_rec : 2); {_F}:37 (--n_heads_rec 2)"),
    "model.dropout": S(0.5, f"{_Y}:14 (hidden_dropout_prob : 0.5)"),
    "model.attn_dropout": S(0.5, f"{_Y}:15 (attn_dropout_prob : 0.5)"),
    "model.act": S("gelu", f"{_Y}:19 (hidden_act : 'gelu')"),
    "model.layer_norm_eps": S(1e-8, f"{_Y}:20 (layer_norm_eps : 1e-8)"),
    "model.init_std": S(0.02, f"{_Y}:6 (initializer_range: 0.02); {_A}:136,146-155 (_init_weights: every Linear and "
                              "Embedding N(0, 0.02), biases 0)"),
    "model.position": S("forward", f"{_A}:225-226 (position_ids = arange(L) over right-padded rows, "
                                   f"{C} dataset/Dataset.py:93-95)"),
    "model.loss_eps": S(1e-8, f"{_A}:254-256,266-268,280-282 (-torch.log(pos / (neg + eps) + eps), "
                              "eps = self.layer_norm_eps = 1e-8)"),
    "model.lr_decay": S(1.0, None),  # the code's decay is train.lr_schedule below; lr_decay would compound
    # --- training ---
    "train.batch_size": S(2048, f"{_Y}:10 (batch_size : 2048)"),
    "train.optimizer": S("adam", f"{_Y}:11 (optim : 'Adam'); {_A}:328"),
    "train.lr": S(1e-3, f"{_A}:328 (lr=1e-3)"),
    "train.weight_decay": S(0.0, f"{_A}:328 (no weight decay)"),
    "train.lr_schedule": S("step", f"{_A}:329-332 (StepLR) {_LIGHTNING}"),
    "train.lr_step_epochs": S(1, f"{_A}:330,332 (step_size=1) {_LIGHTNING}"),
    "train.warmup_steps": S(0, f"{_A}:327-333 (no warm-up)"),
    "train.loss": S("ce", f"{_A}:244-285 (softmax contrastive losses)"),
    "train.max_len": S(50, f"{_A}:88 (max_seq_length = 50); {_D}:12,44 (max_seq_length=50)"),
    "train.windows": S("prefixes", f"{C} dataset/Dataset.py:73-82 (one sample per .train.inter row: UniSRec's "
                                   "files hold every prefix of a user's training part with its next item)"),
    "train.bucket_batches": S(False, f"{_F}:94, {_P}:99 (DataLoader(shuffle=True))"),
    "train.loss_weighting": S("batch", f"{_A}:257,269 (loss.mean() per batch, one step per batch)"),
    "train.mixed_precision": S("fp16", f"{_F}:143, {_P}:118 (pl.Trainer(precision=16))"),
    "train.seed": S(123, f"{_A}:81 (pl.seed_everything(123))"),
    "train.eval_every": S(1, f"{_F}:142-145 (Lightning validates after every epoch)"),
    # --- evaluation ---
    "eval.mode": S("full", f"{_A}:287-297,335-340 (full_sort_predict: cosine over every item)"),
    "eval.history_mask": S("input", f"{_A}:339 (rating_pred[..., interns] = -1e4: the <= 50 input items)"),
    "eval.ks": S([10, 50], f"{_A}:360-363 (r10, r50, n10, n50)"),
}

_CODE_TARGET: dict[str, S] = {
    **_SHARED,
    "prepare.dataset": S("Amazon Scientific (UniSRec's processed downstream set, SWIN_BERT features)",
                         f"{_R}:29-31 (python finetune.py --datasets=Scientific ...)"),
    "model.objective": S("target", f"{_F}:84 (config['training_stage'] = 'finetune')"),
    "model.padding_class": S(True, f"{_A}:244-257,304 (full_seq_item_contrastive_task: the softmax over "
                                   "Modality2Item(self.indices), ids 0..n, row 0 = zero features)"),
    "model.adapt": S("relearn_code", f"{_F}:106-134 (--fixed_enc True: trm_encoder frozen, positions N(0, 0.02); "
                                     "--reinitialize_MoE True: whitening b = 0, expert W xavier-normal, price "
                                     "biases kept, gates 0)"),
    "train.epochs": S(100, f"{_R}:31 (--max_epochs=100); {_F}:29"),
    "train.lr_gamma": S(0.99, f"{_A}:329-330 (training_stage != 'pretrain': StepLR gamma=0.99)"),
    "train.patience": S(100, f"{_F}:136-145 (no EarlyStopping callback: all max_epochs run)"),
    "train.valid_metric": S("hr@10", f"{_F}:137-140 (ModelCheckpoint monitor='total_validation_r10', mode='max')"),
    "train.select_on": S("valid", f"{_F}:147-148 (trainer.test(ckpt_path='best'), best on validation)"),
}

_CODE_PRETRAIN: dict[str, S] = {
    **_SHARED,
    "prepare.dataset": S("Amazon Clothing, Home, Movies, Food merged (item and user ids offset per dataset)",
                         f"{_R}:38 (python pretrain.py --datasets=Clothing_Home_Movies_Food); {_D}:44-75 (PretrainSequentialRecDataset)"),
    "model.objective": S("pretrain", f"{_R}:38 (--training_stage=pretrain)"),
    "model.it_weight": S(1e-3, f"{_A}:323 (item_loss + 1e-3 * contrastive_loss)"),
    "model.it_pairs": S("code", f"{_A}:271-285 (rows: targets with an image; columns: every target's text; "
                                "no same-item mask)"),
    "model.pretrain_positions": S("last", f"{_A}:240 (gather_indexes(output, seq_lens - 1): one state "
                                          "per (prefix, next item) sample)"),
    "model.pretrain_negatives": S("batch", f"{_A}:259-266,309 (every other sample's target, only the same "
                                           "label masked; same_pos_id from label ids)"),
    "train.epochs": S(300, f"{_R}:38 (--max_epochs=300)"),
    "train.lr_gamma": S(0.995, f"{_A}:331-332 (training_stage == 'pretrain': StepLR gamma=0.995)"),
    "train.patience": S(300, f"{_P}:104-120 (no EarlyStopping callback: all max_epochs run)"),
}


_PAPER_COMMON: dict[str, S] = {
    "prepare.features_text": S("BERT 768-d per item", "paper (Method summary): 'processes item texts with BERT'; "
                                                      f"dimension: code {_D}:101"),
    "prepare.features_image": S("SWIN (base) 1024-d, the mean of each item's non-zero image rows (up to 4)",
                                "paper (Method summary): 'images with SWIN'; the averaging and dimension: "
                                f"code {_D}:102,123-127"),
    "prepare.features_price": S("64-d sinusoidal code of the price",
                                f"paper (Method summary): 'prices with sinusoidal encoding'; dimension: code {_D}:103"),
    "model.gate_noise": S(True, "paper (Mechanism 3): 'Gaussian routing ... sampling weights from a Gaussian "
                                "distribution parameterized by mean and standard deviation'"),
}

_PAPER_COMMON["model.loss_eps"] = S(0.0, "paper silent (a softmax contrastive loss); the code's +1e-8 terms "
                                         "(its layer_norm_eps reused) cap a sample's loss at -log(1e-8) = 18.4, a "
                                         "numerical artefact, code presets only")

_PAPER_TARGET = paper_from_code(_CODE_TARGET, {
    **_PAPER_COMMON,
    "model.padding_class": S(False, "paper silent; the code's padding row as a class (its table indexed by ids "
                                    "0..n, row 0 = zero features) is an indexing artefact, code preset only"),
    "model.adapt": S("relearn", "paper (Mechanism 2): 'relearns item representation parameters and position "
                                "embeddings from scratch ... while keeping the user intent model fixed'; from "
                                "scratch = the code's own from-scratch initialisation, N(0, 0.02) "
                                f"({_A}:136,146-155), not finetune.py's xavier re-draw"),
})

_PAPER_PRETRAIN = paper_from_code(_CODE_PRETRAIN, {
    **_PAPER_COMMON,
    "model.pretrain_negatives": S("other_users", "paper silent on the batch (the stored copy is a summary); the "
                                                 "code's negatives are the other (prefix, next item) samples of a "
                                                 "shuffled batch, i.e. other users' next items "
                                                 f"({_A}:259-268, {_F}:94); other_users keeps that when a user's "
                                                 "several prefixes share a batch"),
})

PRESETS = {
    "paper": _PAPER_TARGET,
    "code": dict(_CODE_TARGET),
    "paper_pretrain": _PAPER_PRETRAIN,
    "code_pretrain": dict(_CODE_PRETRAIN),
}
