"""UniSRec presets (docs/fidelity/unisrec.md). ``paper`` / ``code``: fine-tuning on a downstream set
(``model.init_from=<pre-training run>``); ``paper_pretrain`` / ``code_pretrain``: the multi-domain
pre-training that run comes from. ``paper``: what the paper (KDD 2022, arXiv 2206.05941) states, else
the code; ``code``: RUCAIBox/UniSRec@05aa5cb on RecBole 1.2.1 as released, its quirks behind their flags.

Mode: the code's default ``train_stage`` and the README's command "to reproduce the results reported
in our paper" are ``transductive_ft`` (text + id); the inductive setting (text only) is
``--set model.mode=inductive`` (the code's ``--train_stage=inductive_ft``). The stored copy of the
paper reaches only its introduction, so paper values fall back to the code ("paper silent; code:
...") except those the method sections' equations fix. Sizes are the paper's (hidden 300, BERT 768-d
features, batch 2048 / 8192): scale them down with ``--set`` for CPU runs.
"""

from mmrec.trainers.presets import S, paper_from_code, silent

_C = "RUCAIBox/UniSRec@05aa5cb"
_U = f"{_C} props/UniSRec.yaml"
_F = f"{_C} props/finetune.yaml"
_P = f"{_C} props/pretrain.yaml"
_M = f"{_C} unisrec.py"
_T = f"{_C} data/transform.py"
_A = f"{_C} dataset/preprocessing/process_amazon.py"
_R = "RecBole 1.2.1 recbole/properties/overall.yaml"


# settings both stages share (the model and the data's text)
_MODEL: dict[str, S] = {
    "prepare.dataset": S("Amazon 2018 (ratings only + metadata); items without metadata removed", f"{_A}:15-58 (load_ratings, load_meta_items), 133 (filter_inters(can_items=meta items))"),
    "prepare.min_user_interactions": S(5, f"{_A}:367 (--user_k 5)"),
    "prepare.min_item_interactions": S(5, f"{_A}:368 (--item_k 5)"),
    "prepare.kcore_iterative": S(True, f"{_A}:80-86 (filter_inters: while True, until no user or item is below k)"),
    "prepare.split": S("loo", f"{_A}:333-345 (convert_to_atomic_files: train = items[:-2], valid = items[-2], test = items[-1])"),
    "prepare.features_text": S("bert-base-uncased [CLS] of the last layer, text = title + category + brand, "
                               "max_length 512", f"{_A}:224 (generate_text title, category, brand), 305 (max_length=512), 372-373 (--plm_name bert-base-uncased, --emb_type CLS)"),
    "prepare.feature_dim": S(768, f"{_U}:19 (plm_size: 768)"),
    "model.hidden": S(300, f"{_U}:3 (hidden_size: 300)"),
    "model.layers": S(2, f"{_U}:1 (n_layers: 2)"),
    "model.heads": S(2, f"{_U}:2 (n_heads: 2)"),
    "model.inner": S(256, f"{_U}:4 (inner_size: 256)"),
    "model.dropout": S(0.5, f"{_U}:5 (hidden_dropout_prob: 0.5)"),
    "model.attn_dropout": S(0.5, f"{_U}:6 (attn_dropout_prob: 0.5)"),
    "model.act": S("gelu", f"{_U}:7 (hidden_act: 'gelu')"),
    "model.init_std": S(0.02, f"{_U}:9 (initializer_range: 0.02)"),
    "model.position": S("forward", "RecBole SASRec: position ids 0..L-1 from the oldest item (right padding)"),
    "model.n_experts": S(8, f"{_U}:23 (n_exps: 8)"),
    "model.adaptor_dropout": S(0.2, f"{_U}:20 (adaptor_dropout_prob: 0.2)"),
    "model.temperature": S(0.07, f"{_U}:22 (temperature: 0.07)"),
    "model.same_target_logit": S("0", f"{_M}:113,130 (torch.where(same_pos_id, 0, neg_logits): each still adds exp(0))"),
    "train.optimizer": S("adam", f"{_R}:22 (learner: adam)"),
    "train.lr": S(1e-3, f"{_R}:23 (learning_rate: 0.001)"),
    "train.weight_decay": S(0.0, f"{_R}:33 (weight_decay: 0.0)"),
    "train.loss": S("ce", f"{_U}:10 (loss_type: 'CE')"),
    "train.max_len": S(50, f"{_A}:333-345 (the last 50 items before each target)"),
    "train.windows": S("prefixes", f"{_A}:345 (.train.inter: one row per prefix, target_item = item_seq[-target_idx])"),
    "train.bucket_batches": S(False, "RecBole TrainDataLoader: shuffled samples, each padded to 50"),
    "train.loss_weighting": S("batch", "RecBole Trainer._train_epoch: the mean loss of each batch"),
    "train.seed": S(2020, f"{_R}:5 (seed: 2020)"),
}

_FINETUNE_CODE: dict[str, S] = {
    **_MODEL,
    "model.objective": S("finetune", f"{_C} finetune.py"),
    "model.mode": S("transductive", f"{_U}:18 (train_stage: transductive_ft); README: 'python finetune.py -d Scientific "
                                    "-p saved/UniSRec-FHCKM-300.pth' reproduces the paper's results"),
    "model.freeze_encoder": S(True, f"{_C} finetune.py:12,41-46 (fix_enc=True: position_embedding and trm_encoder frozen)"),
    "model.pad_candidate": S(True, f"{_M}:162,171 (moe_adaptor(plm_embedding.weight): the padding row 0 is a class)"),
    "prepare.downstream": S("Scientific, Pantry, Instruments, Arts, Office (Amazon 2018), Online Retail",
                            f"{_C} README.md (finetune.py -d Scientific ... Pantry, Instruments, Arts, Office or OR)"),
    "train.epochs": S(300, f"{_R}:20 (epochs: 300)"),
    "train.batch_size": S(2048, f"{_R}:21 (train_batch_size: 2048; finetune.yaml sets none)"),
    "train.patience": S(11, f"{_F}:13 (stopping_step: 10; RecBole's early_stopping counts a tie as an improvement and "
                            "stops after stopping_step + 1 validations without one, bench/recbole_side_by_side.py)"),
    "train.valid_metric": S("ndcg@10", f"{_F}:11 (valid_metric: NDCG@10)"),
    "train.select_on": S("valid", f"{_C} finetune.py (trainer.evaluate(test_data, load_best_model=True))"),
    "eval.mode": S("full", "RecBole FullSortEvalDataLoader (every item ranked)"),
    "eval.history_mask": S("none", "RecBole 1.2.1 full-sort for a SEQUENTIAL dataset: history_index None, only item 0 "
                                   "masked (bench/recbole_side_by_side.py)"),
    "eval.ks": S([10, 50], f"{_F}:9 (topk: [10, 50])"),
}

_PRETRAIN_CODE: dict[str, S] = {
    **_MODEL,
    "prepare.dataset": S("FHCKM: Food, Home, CDs, Kindle, Movies (Amazon 2018), merged; the train prefixes only",
                         f"{_C} dataset/preprocessing/to_pretrain_atomic_files.py; {_P}:2 (benchmark_filename: [train])"),
    "prepare.word_drop_features": S("the same encoder's vectors of the text with each (space-separated) word dropped "
                                    "w.p. 0.15 (feat2CLS)", f"{_A}:292-301, 374, 404-406 (--word_drop_ratio 0.15)"),
    "model.objective": S("pretrain", f"{_P}:9 (train_stage: pretrain)"),
    "model.mode": S("inductive", f"{_M}:73-75 (train_stage pretrain: item_embedding = None)"),
    "model.seq_seq_weight": S(1e-3, f"{_U}:14 (lambda: 1e-3); {_M}:150 (loss_seq_item + self.lam * loss_seq_seq)"),
    "model.item_drop_prob": S(0.9, f"{_U}:13 (item_drop_coefficient: 0.9); {_T}:49-50 (one random.random() a batch)"),
    "model.drop_ratio": S(0.2, f"{_U}:12 (item_drop_ratio: 0.2); {_T}:45-46 (bernoulli(1 - item_drop_ratio))"),
    "model.item_drop_rule": S("scatter", f"{_T}:53-57 (mask[:,0] = True, then scatter to cumsum(mask) - 1: a run of "
                                         "dropped items overwrites the kept one before it)"),
    # an entry path: the preset cannot name it; give it with --set (None: item drop on every batch)
    "model.word_drop_features": S(None, f"{_U}:17 (plm_suffix_aug: feat2CLS); give the entry with --set "
                                        "model.word_drop_features=ENTRY"),
    "train.epochs": S(300, f"{_P}:10 (pretrain_epochs: 300)"),
    "train.batch_size": S(8192, f"{_P}:12 (train_batch_size: 8192)"),
    # the code does not validate while pre-training and fine-tunes from the epoch-300 checkpoint
    # (README: UniSRec-FHCKM-300.pth): keep the last epoch, never stop early
    "train.select_on": S("last", f"{_C} README (fine-tunes from UniSRec-FHCKM-300.pth, the last pre-training epoch)"),
    "train.patience": S(300, f"{_C} trainer.py / RecBole PretrainTrainer.pretrain (no validation, saves every "
                             f"save_step = 50 epochs, {_P}:11)"),
    "train.eval_every": S(50, f"{_P}:11 (save_step: 50)"),
}

_PAPER_OVERRIDES: dict[str, S] = {
    # the paper's stated intent where the code differs; the code's artefacts stay in ``code``
    "model.same_target_logit": S("-inf", "paper Sec. 3.2 (sequence-item and sequence-sequence tasks): in-batch negatives are the other sequences' "
                                         "items; a same-target row is not a negative (mmrec removes it; the code's "
                                         "logit 0 still counts it as exp(0))"),
    "model.item_drop_rule": S("keep", "paper Sec. 3.2 (item drop: a ratio of the items of the sequence dropped); the kept items in order, the first kept as the "
                                      "code's mask[:,0] = True intends"),
    "model.pad_candidate": S(False, "paper Sec. 3.3 (fine-tuning: a softmax over the items of the target domain); the "
                                    "padding row is a RecBole artefact"),
    "model.freeze_encoder": S(True, "paper Sec. 3.3: parameter-efficient fine-tuning, the sequence encoder fixed, "
                                    "only the MoE adaptor tuned"),
    "model.seq_seq_weight": S(1e-3, "paper Sec. 3.2 (L_PT = L_S-I + lambda L_S-S); lambda: code "
                                    f"{_U}:14 (1e-3)"),
    "model.temperature": S(0.07, "paper Sec. 3.2 (tau); value: code " + f"{_U}:22"),
}


def _paper(code: dict[str, S]) -> dict[str, S]:
    return {k: v for k, v in paper_from_code(code, _PAPER_OVERRIDES).items() if k in code}


def _paper_pretrain() -> dict[str, S]:
    out = _paper(_PRETRAIN_CODE)
    out["model.item_drop_prob"] = S(0.9, "paper Sec. 3.2 (item drop and word drop); " + silent(
        _PRETRAIN_CODE["model.item_drop_prob"].source))
    return out


def _paper_finetune() -> dict[str, S]:
    out = _paper(_FINETUNE_CODE)
    out["train.patience"] = S(10, f"paper silent; code: {_F}:13 (stopping_step: 10), counted as mmrec counts patience")
    return out


PRESETS = {
    "paper": _paper_finetune(),
    "code": dict(_FINETUNE_CODE),
    "paper_pretrain": _paper_pretrain(),
    "code_pretrain": dict(_PRETRAIN_CODE),
}
