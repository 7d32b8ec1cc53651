"""Top-K recommendations per user from a trained run, written to Parquet with raw ids.

For each user the model reads the last ``train.max_len`` events of the history (``history=all``:
every event, so the list recommends what comes after the test item; ``train``: the training part
only, what the model would have recommended at the validation point) and scores every item in
chunks of ``item_chunk``, keeping a running top-K per user, so memory grows with users x K, not
users x items. The output has one row per (user, rank):

    user_id (string, raw)   rank (int32, 1 = best)   item_id (string, raw)   score (float32)

``exclude_seen`` (default) leaves out the items of the user's history as read (``history``). Items a
method cannot rank are never recommended: the padding id, and in a cold-start run of a method that
scores by id only the held-out items (it never trained their embeddings). A user gets fewer than K
rows when fewer items are left. The file is written under a temporary name and renamed when
complete.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mmrec.data.prepared import PreparedDataset, _ranges
from mmrec.errors import ConfigError
from mmrec.runs.config import saved_run_config
from mmrec.runs.folder import RunFolder
from mmrec.trainers.batching import cut_windows

SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                    ("score", pa.float32())])


@dataclass
class RecommendConfig:
    k: int = 10
    exclude_seen: bool = True
    history: Literal["all", "train"] = "all"
    batch_size: int = 256
    item_chunk: int = 65536
    checkpoint: Literal["best", "last"] = "best"

    def validate(self) -> None:
        if self.k < 1 or self.batch_size < 1 or self.item_chunk < 1:
            raise ConfigError("k, batch_size and item_chunk must be positive")


def load_trained_model(run_dir: str | Path, overrides: list[str] | None = None, checkpoint: str = "best"):
    """The trained model of ``run_dir`` (its saved config, upgraded to this version and with
    ``overrides``) on CPU in eval mode, the run config, and the dataset view the run was trained on
    (cold-start runs: without the held-out items' training events). The pre-training run named by
    ``model.init_from`` is not needed: the checkpoint holds every tensor."""
    from mmrec.trainers.loop import build_model, run_data

    folder = RunFolder(run_dir)
    run = saved_run_config(folder, overrides)
    data, _ = run_data(run)  # the view the run was trained on (cold-start runs: without held-out events)
    model, _ = build_model(run, data)
    model.load_state_dict(folder.weights(checkpoint))
    model.eval()
    return model, run, data


def _unrankable(model: Any, run: Any, n_items: int) -> np.ndarray:
    """Bool ``[n_items + 1]``: items never recommended (padding; held-out items of an id-only method)."""
    from mmrec.trainers.loop import cold_items

    out = np.zeros(n_items + 1, dtype=bool)
    out[0] = True
    if run.cold.fraction > 0 and not model.can_rank_unseen():
        out |= cold_items(n_items, run.cold)
    return out


@torch.no_grad()
def recommend(run_dir: str | Path, out_path: str | Path, cfg: RecommendConfig | None = None,
              users: list[str] | None = None, overrides: list[str] | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the top-``cfg.k`` items of each user (all users, or the raw ids ``users``) to
    ``out_path`` (Parquet); returns statistics."""
    cfg = cfg or RecommendConfig()
    cfg.validate()
    run_dir, out_path = Path(run_dir), Path(out_path)
    t0 = time.perf_counter()
    model, run, _ = load_trained_model(run_dir, overrides, cfg.checkpoint)
    data = PreparedDataset(run.dataset)  # every event of each user, held-out items included
    n_items, max_len = data.n_items, run.train.max_len
    raw_users, raw_items = data.raw_user_ids, data.raw_item_ids
    if users is None:
        uids = np.arange(data.n_users, dtype=np.int64)
    else:
        index = {u: i for i, u in enumerate(raw_users)}
        unknown = [u for u in users if u not in index]
        if unknown:
            raise ConfigError(f"{len(unknown)} user id(s) not in dataset {data.root}: "
                              f"{', '.join(map(str, unknown[:5]))}{' ...' if len(unknown) > 5 else ''}; "
                              "give raw user ids as in the dataset's users.parquet")
        uids = np.array([index[u] for u in users], dtype=np.int64)
    blocked = torch.as_tensor(_unrankable(model, run, n_items))
    start = data.offsets[:-1]
    end = data.offsets[1:] if cfg.history == "all" else data.train_end()
    k = min(cfg.k, n_items)
    tmp = out_path.with_name(out_path.name + ".tmp")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n_rows = 0
    with pq.ParquetWriter(str(tmp), SCHEMA) as writer:
        for b0 in range(0, len(uids), cfg.batch_size):
            u = uids[b0:b0 + cfg.batch_size]
            s, e = start[u], end[u]
            items, lengths = cut_windows(data.items, s, e, max_len)
            items = items[:, :max(int(lengths.max()), 1)]
            q = model.query(torch.as_tensor(items), torch.as_tensor(lengths))
            seen_rows = np.repeat(np.arange(len(u)), e - s)
            seen_items = np.asarray(data.items)[_ranges(s, e)].astype(np.int64)
            best_s = torch.full((len(u), 0), float("-inf"))
            best_i = torch.zeros((len(u), 0), dtype=torch.long)
            for lo in range(1, n_items + 1, cfg.item_chunk):
                hi = min(n_items, lo + cfg.item_chunk - 1) + 1
                sc = model.score_range(q, lo, hi).float()
                sc[:, blocked[lo:hi]] = float("-inf")
                if cfg.exclude_seen:
                    sel = (seen_items >= lo) & (seen_items < hi)
                    sc[torch.as_tensor(seen_rows[sel]), torch.as_tensor(seen_items[sel] - lo)] = float("-inf")
                kk = min(k, hi - lo)
                cs, ci = sc.topk(kk, dim=1)
                best_s, order = torch.cat([best_s, cs], 1).sort(dim=1, descending=True, stable=True)
                best_i = torch.cat([best_i, ci + lo], 1).gather(1, order)
                best_s, best_i = best_s[:, :k], best_i[:, :k]
            ok = torch.isfinite(best_s).numpy()
            rows, ranks = np.nonzero(ok)
            table = pa.table({
                "user_id": pa.array([str(x) for x in raw_users[u[rows]]], pa.string()),
                "rank": pa.array(ranks + 1, pa.int32()),
                "item_id": pa.array([str(x) for x in raw_items[best_i.numpy()[rows, ranks]]], pa.string()),
                "score": pa.array(best_s.numpy()[rows, ranks], pa.float32()),
            }, schema=SCHEMA)
            writer.write_table(table)
            n_rows += len(rows)
    os.replace(tmp, out_path)
    secs = time.perf_counter() - t0
    stats = {"users": int(len(uids)), "rows": n_rows, "k": k, "exclude_seen": cfg.exclude_seen,
             "history": cfg.history, "seconds": round(secs, 3), "out": str(out_path)}
    log(f"{len(uids):,} users, {n_rows:,} rows (top {k}) -> {out_path} in {secs:.1f}s")
    return stats
