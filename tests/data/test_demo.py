"""The demo dataset generator: determinism, schema, missing values, and the signals it promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from mmrec.data.demo import DEMO_NAME, EPOCH_2024, generate_demo, sample_demo_world
from mmrec.data.schema import RawDataset

# Small enough to be quick, large enough for the statistics below to be stable.
SMALL = dict(n_users=300, n_items=240, n_tastes=6, seq_len_range=(5, 20), image_size=32)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[RawDataset, Path]:
    out = tmp_path_factory.mktemp("demo")
    return generate_demo(out, seed=0), out


@pytest.fixture(scope="module")
def world():
    return sample_demo_world(seed=0)


def _image_bytes(raw: RawDataset) -> dict[str, bytes]:
    out = {}
    for row in raw.catalogue.table.select(["item_id", "images"]).to_pylist():
        for path in row["images"]:
            out[row["item_id"]] = Path(path).read_bytes()
    return out


def _sorted_sequences(raw: RawDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, time) in the order prepare uses: by user, then time, then row order."""
    t = raw.interactions
    users = np.array(t.column("user_id").to_pylist())
    items = np.array(t.column("item_id").to_pylist())
    times = t.column("timestamp").to_numpy()
    order = np.lexsort((np.arange(len(users)), times, users))
    return users[order], items[order], times[order]


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_gives_identical_tables_and_image_bytes(tmp_path: Path) -> None:
    a = generate_demo(tmp_path / "a", seed=3, **SMALL)
    b = generate_demo(tmp_path / "b", seed=3, **SMALL)
    assert a.interactions.equals(b.interactions)
    strip = lambda raw: raw.catalogue.table.drop_columns(["images"])  # noqa: E731 - paths differ by out_dir
    assert strip(a).equals(strip(b))
    assert [len(x) for x in a.catalogue.table.column("images").to_pylist()] == [
        len(x) for x in b.catalogue.table.column("images").to_pylist()
    ]
    assert _image_bytes(a) == _image_bytes(b)
    assert a.source == b.source


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    a = generate_demo(tmp_path / "a", seed=1, **SMALL)
    b = generate_demo(tmp_path / "b", seed=2, **SMALL)
    assert not a.interactions.equals(b.interactions)
    assert not a.catalogue.table.column("title").equals(b.catalogue.table.column("title"))
    ia, ib = _image_bytes(a), _image_bytes(b)
    shared = set(ia) & set(ib)
    assert shared and sum(ia[k] == ib[k] for k in shared) == 0


def test_world_matches_generated_tables(demo: tuple[RawDataset, Path], world) -> None:
    raw, _ = demo
    users, items, times = _sorted_sequences(raw)
    assert list(users) == [world.user_ids[u] for u in world.seq_users]
    assert list(items) == [world.item_ids[i] for i in world.seq_items]
    np.testing.assert_array_equal(times, world.seq_times)


# --- sizes and schema -----------------------------------------------------------------------------


def test_sizes_and_schema(demo: tuple[RawDataset, Path]) -> None:
    raw, out = demo
    assert raw.name == DEMO_NAME == "demo"
    assert raw.time_is_order is False
    assert raw.source["seed"] == 0 and raw.source["n_users"] == 1500 and raw.source["n_items"] == 600
    assert raw.source["generator"] == "mmrec.data.demo.generate_demo"

    inter = raw.interactions
    assert inter.schema.names == ["user_id", "item_id", "timestamp"]
    assert inter.schema.types == [pa.string(), pa.string(), pa.float64()]
    assert all(col.null_count == 0 for col in inter.columns)
    users = np.array(inter.column("user_id").to_pylist())
    _, per_user = np.unique(users, return_counts=True)
    assert len(per_user) == 1500
    assert per_user.min() >= 8 and per_user.max() <= 40

    cat = raw.catalogue
    assert len(cat) == 600
    assert cat.text_fields == ["description", "category"]
    assert cat.table.schema.names == ["item_id", "title", "description", "category", "images", "price", "domain"]
    expected = [pa.string(), pa.string(), pa.string(), pa.string(), pa.list_(pa.string()), pa.float64(), pa.string()]
    assert cat.table.schema.types == expected
    assert cat.image_root == str((out / "images").resolve())
    assert set(cat.table.column("domain").to_pylist()) == {"apparel", "books", "garden", "kitchen"}
    assert set(inter.column("item_id").to_pylist()) <= set(cat.item_ids)
    assert cat.table.column("title").null_count == 0
    assert cat.table.column("category").null_count == 0


def test_rows_are_interleaved_across_users(demo: tuple[RawDataset, Path]) -> None:
    users = np.array(demo[0].interactions.column("user_id").to_pylist())
    changes = np.count_nonzero(users[1:] != users[:-1])
    assert changes > 0.9 * len(users)  # not grouped by user


def test_timestamps(demo: tuple[RawDataset, Path]) -> None:
    users, _, times = _sorted_sequences(demo[0])
    same_user = users[1:] == users[:-1]
    steps = np.diff(times)[same_user]
    assert np.all(steps >= 0)
    ties = np.mean(steps == 0)
    assert 0.005 < ties < 0.05  # a few exact ties
    assert np.all(times == np.round(times))
    assert times.min() >= EPOCH_2024


def test_ties_keep_sequence_order_in_the_file(demo: tuple[RawDataset, Path], world) -> None:
    # Sorting by (user, time) with the row order as tie-breaker recovers the generated sequence, also
    # where a user's events share a time stamp (there are such ties, so this is not vacuous)
    users, items, times = _sorted_sequences(demo[0])
    tied = np.flatnonzero((users[1:] == users[:-1]) & (times[1:] == times[:-1]))
    assert len(tied) > 0
    expect = np.array([world.item_ids[i] for i in world.seq_items])
    np.testing.assert_array_equal(items[tied], expect[tied])
    np.testing.assert_array_equal(items[tied + 1], expect[tied + 1])
    # a sort by (user, time) alone, ties in reverse row order, would not recover them
    t = demo[0].interactions
    rev = np.lexsort((-np.arange(len(t)), t.column("timestamp").to_numpy(), np.array(t.column("user_id").to_pylist())))
    assert (np.array(t.column("item_id").to_pylist())[rev][tied] != expect[tied]).any()


# --- missing values -------------------------------------------------------------------------------


def test_missing_value_rates(demo: tuple[RawDataset, Path]) -> None:
    table = demo[0].catalogue.table
    n = table.num_rows
    no_image = sum(len(x) == 0 for x in table.column("images").to_pylist())
    assert no_image / n == pytest.approx(0.02, abs=0.005)
    assert table.column("price").null_count / n == pytest.approx(0.03, abs=0.005)
    assert table.column("description").null_count / n == pytest.approx(0.01, abs=0.005)
    prices = table.column("price").drop_null().to_numpy()
    assert np.all(prices > 0) and not np.any(np.isnan(prices))


def test_images_exist_only_where_listed(demo: tuple[RawDataset, Path]) -> None:
    raw, out = demo
    listed = {Path(p) for paths in raw.catalogue.table.column("images").to_pylist() for p in paths}
    assert all(p.is_absolute() for p in listed)
    assert listed == set((out / "images").resolve().glob("*.png"))


# --- the signals ----------------------------------------------------------------------------------


def test_images_decode_and_mean_colour_tells_the_taste(demo: tuple[RawDataset, Path], world) -> None:
    raw, _ = demo
    index = {item_id: i for i, item_id in enumerate(world.item_ids)}
    means, tastes = [], []
    for row in raw.catalogue.table.select(["item_id", "images"]).to_pylist():
        for path in row["images"]:
            with Image.open(path) as img:
                assert img.format == "PNG" and img.mode == "RGB" and img.size == (64, 64)
                means.append(np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(axis=0))
            tastes.append(world.item_taste[index[row["item_id"]]])
    means, tastes = np.array(means), np.array(tastes)
    train = np.arange(len(tastes)) % 2 == 0
    centroids = np.stack([means[train & (tastes == t)].mean(axis=0) for t in range(len(world.taste_names))])
    test = ~train
    predicted = np.argmin(((means[test, None, :] - centroids[None]) ** 2).sum(axis=-1), axis=1)
    assert np.mean(predicted == tastes[test]) > 0.9


def test_text_tells_the_taste(demo: tuple[RawDataset, Path], world) -> None:
    from mmrec.data.demo import _pick_tastes

    words = [set(t.colours) | set(t.moods) for t in _pick_tastes(len(world.taste_names))]
    table = demo[0].catalogue.table
    correct = total = 0
    texts = zip(table.column("title").to_pylist(), table.column("description").to_pylist())
    for i, (title, description) in enumerate(texts):
        tokens = set(f"{title} {description or ''}".lower().replace(".", " ").replace(",", " ").split())
        votes = [len(tokens & w) for w in words]
        correct += int(np.argmax(votes) == world.item_taste[i])
        total += 1
    assert correct / total > 0.85


def test_sequential_signal(demo: tuple[RawDataset, Path], world) -> None:
    users, items, _ = _sorted_sequences(demo[0])
    index = {item_id: i for i, item_id in enumerate(world.item_ids)}
    item_idx = np.array([index[x] for x in items])
    same_user = users[1:] == users[:-1]
    cur, nxt = item_idx[:-1][same_user], item_idx[1:][same_user]

    same_taste = np.mean(world.item_taste[cur] == world.item_taste[nxt])
    assert same_taste > 0.6
    assert same_taste < 0.9  # users do switch tastes

    # chain: within a taste, item k is often followed by k+1..k+3 (by chance: about 3 in 50)
    chain_size = np.bincount(world.item_taste[~world.item_niche])
    t = world.item_taste[cur]
    on_chain = ~world.item_niche[cur] & ~world.item_niche[nxt] & (world.item_taste[nxt] == t)
    hop = (world.item_chain_pos[nxt] - world.item_chain_pos[cur]) % chain_size[t]
    chain_rate = np.mean(on_chain & (hop >= 1) & (hop <= 3))
    assert chain_rate > 0.3


def test_popularity_is_skewed(demo: tuple[RawDataset, Path]) -> None:
    items = np.array(demo[0].interactions.column("item_id").to_pylist())
    _, counts = np.unique(items, return_counts=True)
    counts = np.sort(counts)[::-1]
    assert counts[: len(counts) // 10].sum() / counts.sum() > 0.25  # top 10% of items


def test_niche_items_are_rare(demo: tuple[RawDataset, Path], world) -> None:
    index = {item_id: i for i, item_id in enumerate(world.item_ids)}
    items = [index[x] for x in demo[0].interactions.column("item_id").to_pylist()]
    counts = np.bincount(items, minlength=len(world.item_ids))
    assert world.item_niche.mean() == pytest.approx(0.3, abs=0.02)
    assert np.median(counts[world.item_niche]) <= 3
    assert np.any(counts[world.item_niche] == 0)  # some items are cold: never interacted with
    assert counts[~world.item_niche].min() >= 5


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [(dict(n_tastes=1), r"n_tastes must be between 2 and 16, got 1"),
     (dict(n_tastes=17), r"n_tastes must be between 2 and 16, got 17"),
     (dict(n_items=10), r"n_items must be at least 4 \* n_tastes = 32, got 10"),
     (dict(seq_len_range=(5, 4)), r"seq_len_range must be \(lo, hi\) with 2 <= lo <= hi, got \(5, 4\)"),
     (dict(n_users=0), r"n_users must be at least 1, got 0")],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        generate_demo(tmp_path, **kwargs)
