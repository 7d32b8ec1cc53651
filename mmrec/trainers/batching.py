"""Vectorised batch building from the flat event array: no Python loop per sample.

Every window is cut with one gather: ``flat[start[:, None] + arange(L)]`` under a validity mask,
right-padded with 0.
"""

from __future__ import annotations

import numpy as np

from mmrec.data.prepared import PreparedDataset, _ranges
from mmrec.errors import ConfigError


def cut_windows(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``flat[max(start, end - width):end]``, right-padded with 0 to ``width``; returns (rows, lengths)."""
    s = np.maximum(starts, ends - width)
    n = (ends - s).astype(np.int64)
    ar = np.arange(width)
    idx = s[:, None] + ar[None, :]
    valid = ar[None, :] < n[:, None]
    rows = np.where(valid, np.asarray(flat)[np.minimum(idx, len(flat) - 1)], 0)
    return rows.astype(np.int64), n


class TrainSamples:
    """Training windows: each sample is (user, end) and covers the targets before ``end``.

    ``windows='last'`` (SASRec and S3-Rec): one window per user, the last ``max_len`` training
    targets. ``windows='all'``: the user's training part cut into consecutive windows ending at the
    end of the training part, so every training target appears exactly once per epoch.
    ``windows='prefixes'`` (session-based code, e.g. KDSR's): every prefix of the training part is
    one sample whose only target is its last item (the window's other targets are masked to 0), so
    each training target is also seen once per epoch, but with only its own history, as one sample.
    """

    def __init__(self, data: PreparedDataset, max_len: int, windows: str = "last",
                 exclude: np.ndarray | None = None, negatives_avoid: str = "train"):
        self.data = data
        self._exclude = None if exclude is None else np.asarray(exclude, dtype=bool)  # never sampled as negatives
        self.max_len = max_len
        starts = data.offsets[:-1]
        a = data.split[:, 0]
        n_targets = np.maximum(a - 1, 0)
        users = np.flatnonzero(n_targets > 0)
        if windows == "last":
            self.user = users.astype(np.int64)
            self.end = (starts + a)[users]
        elif windows == "prefixes":
            per = n_targets[users]
            self.user = np.repeat(users, per).astype(np.int64)
            k = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)  # 0 .. per - 1
            self.end = np.repeat(starts[users], per) + k + 2
        elif windows == "all":
            per = -(-n_targets[users] // max_len)  # ceil
            self.user = np.repeat(users, per).astype(np.int64)
            k = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)
            self.end = np.repeat((starts + a)[users], per) - k * max_len
        else:
            raise ValueError(f"windows must be 'last', 'all' or 'prefixes', not {windows!r}")
        self.only_last = windows == "prefixes"
        # sorted (user, item) keys of the events whose items are never a user's negatives: the
        # training events ("train"), or the whole sequence with its validation and test items
        # ("sequence", as S3-Rec's code: it leaks the future into training by never pushing it down)
        if negatives_avoid not in ("train", "sequence"):
            raise ValueError(f"negatives_avoid must be 'train' or 'sequence', not {negatives_avoid!r}")
        upto = a if negatives_avoid == "train" else data.lengths
        tr = _ranges(starts, starts + upto)
        self._n_items = data.n_items
        user_of = np.repeat(np.arange(data.n_users, dtype=np.int64), np.maximum(upto, 0))
        self._keys = np.unique(user_of * (data.n_items + 1) + np.asarray(data.items)[tr])

    def __len__(self) -> int:
        return len(self.user)

    def lengths(self) -> np.ndarray:
        start = self.data.offsets[self.user]
        return np.minimum(self.end - start - 1, self.max_len)

    def targets_per_sample(self) -> np.ndarray:
        """How many targets each sample trains on (1 each with ``windows='prefixes'``)."""
        return np.minimum(self.lengths(), 1) if self.only_last else self.lengths()

    def epoch_batches(self, batch_size: int, rng: np.random.Generator, bucket: bool) -> list[np.ndarray]:
        """Sample indices per batch for one epoch.

        ``bucket=False``: a random permutation cut into batches. ``bucket=True`` ("sortish"): the
        permutation is cut into pools of 50 batches, each pool sorted by window length and cut into
        batches, and the batch order shuffled; batches are then trimmed to their longest window,
        which removes most padding when lengths are skewed (same samples, same targets per epoch).
        """
        n = len(self)
        perm = rng.permutation(n)
        if not bucket:
            return [perm[i:i + batch_size] for i in range(0, n, batch_size)]
        lens = self.lengths()
        pool = 50 * batch_size
        batches = []
        for i in range(0, n, pool):
            chunk = perm[i:i + pool]
            chunk = chunk[np.argsort(lens[chunk], kind="stable")]
            batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
        order = rng.permutation(len(batches))
        return [batches[k] for k in order]

    def batch(self, idx: np.ndarray, n_neg: int = 0, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        user, end = self.user[idx], self.end[idx]
        start = self.data.offsets[user]
        w, n = cut_windows(self.data.items, start, end, self.max_len + 1)
        items = w[:, :-1].copy()
        targets = w[:, 1:].copy()
        lengths = np.maximum(n - 1, 0)
        items[np.arange(self.max_len)[None, :] >= lengths[:, None]] = 0
        if self.only_last:  # a prefix trains on its last item only
            targets[np.arange(self.max_len)[None, :] < (lengths - 1)[:, None]] = 0
        width = max(int(lengths.max()) if len(lengths) else 1, 1)
        items, targets = items[:, :width], targets[:, :width]
        out = {"user": user, "items": items, "lengths": lengths, "targets": targets}
        if n_neg:
            assert rng is not None
            shape = targets.shape + ((n_neg,) if n_neg > 1 else ())
            out["negatives"] = self.sample_negatives(user, shape, rng)
        return out

    def sample_negatives(self, user: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Uniform item ids the user has not interacted with in training (resampled on collision);
        excluded (held-out) items are never drawn."""
        n = self._n_items
        u = np.broadcast_to(user.reshape((-1,) + (1,) * (len(shape) - 1)), shape)
        neg = rng.integers(1, n + 1, size=shape)
        for _ in range(20):
            keys = u * (n + 1) + neg
            pos = np.searchsorted(self._keys, keys)
            hit = self._keys[np.minimum(pos, len(self._keys) - 1)] == keys
            if self._exclude is not None:
                hit |= self._exclude[neg]
            if not hit.any():
                break
            neg[hit] = rng.integers(1, n + 1, size=int(hit.sum()))
        return neg


class SharedNegatives:
    """The negatives of ``train.loss=sampled_ce``: K item ids drawn once per training step and shared
    by every position of the batch, and ``log_q`` (``[n_items + 1]``, float32): the log of each item's
    expected number of times among the K draws, which the loss subtracts from its logit (log-Q).

    ``uniform``: K distinct items (without replacement) among the m that may be drawn, each with
    probability K / m of being one. ``popularity``: K independent draws (with replacement; a popular
    item may come several times), item i with probability ``p_i = c_i^power / sum_j c_j^power`` from
    the training-part counts ``counts`` (``PreparedDataset.item_popularity``: never validation or
    test), expected count ``K p_i``; items never seen in training are never drawn. Excluded
    (held-out) items are never drawn. Items that cannot be drawn get ``log_q = 0`` (they are never a
    negative, and never a training target either).
    """

    def __init__(self, n_items: int, k: int, distribution: str = "uniform", counts: np.ndarray | None = None,
                 power: float = 1.0, exclude: np.ndarray | None = None):
        allowed = np.ones(n_items + 1, dtype=bool)
        allowed[0] = False
        if exclude is not None:
            allowed &= ~np.asarray(exclude, dtype=bool)
        self.k, self.distribution = int(k), distribution
        if distribution == "uniform":
            weights = allowed.astype(np.float64)
        elif distribution == "popularity":
            if counts is None:
                raise ConfigError("train.sampled_distribution=popularity needs the items' training counts")
            c = np.asarray(counts, dtype=np.float64)
            weights = np.where(allowed & (c > 0), c ** power, 0.0)
        else:
            raise ConfigError(f"train.sampled_distribution must be 'uniform' or 'popularity', not {distribution!r}")
        self.ids = np.flatnonzero(weights > 0)
        m = len(self.ids)
        if not 1 <= self.k < m:
            raise ConfigError(f"train.sampled_negatives={self.k} must be at least 1 and below the {m:,} items a "
                              f"{distribution} draw can take (of {n_items:,}); use train.loss=ce for a softmax over "
                              "every item")
        self.log_q = np.zeros(n_items + 1, dtype=np.float32)
        if distribution == "uniform":
            self.log_q[self.ids] = np.log(self.k / m)
            self._cdf = None
        else:
            p = weights[self.ids] / weights[self.ids].sum()
            self.log_q[self.ids] = np.log(self.k * p)
            self._cdf = np.cumsum(weights[self.ids])

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """K item ids ``[K]`` (int64) for one step."""
        if self._cdf is None:
            return self.ids[rng.choice(len(self.ids), size=self.k, replace=False)]
        u = rng.random(self.k) * self._cdf[-1]
        return self.ids[np.minimum(np.searchsorted(self._cdf, u, side="right"), len(self.ids) - 1)]
