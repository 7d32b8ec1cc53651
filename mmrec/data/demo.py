"""A small synthetic multi-modal shop whose side information reveals what drives its users.

``generate_demo`` writes a catalogue (titles, descriptions, categories, prices, PNG images) and a
table of user sequences. It exists so that every part of mmrec can be tried end to end in seconds,
and so that the results *mean* something: the data are built such that

* any sequential model beats a popularity ranking (items have a successor structure), and
* a model that reads the text or the images beats an ID-only model on rare and cold items (the
  latent "taste" that drives behaviour is visible in both modalities, while an ID embedding of an
  item seen twice has learned nothing).

The generative story
--------------------

**Tastes.** There are ``n_tastes`` latent styles, each a colour theme with a name ("crimson",
"amber", "lime", "forest", "lagoon", "ocean", "violet", "orchid" for the default 8), a hue, a few
colour words ("red", "scarlet", "ruby") and a few mood words ("fiery", "bold", "passionate"). Hues
are spread evenly around the colour wheel.

**Items.** Each item gets a taste (balanced: every taste has about ``n_items / n_tastes`` items), a
domain (``apparel``, ``books``, ``garden`` or ``kitchen``, uniformly) and a price level (budget,
standard or premium). Its side information follows from these:

* *title*, e.g. "Scarlet linen scarf": a colour word of the taste, a material (pure noise) and a
  noun of the domain;
* *description*, e.g. "A fiery red scarf in linen, made for everyday wear. Premium, handcrafted
  quality. Gift ready.": mood and colour words of the taste, the domain's phrase, the price level's phrase and a
  random filler sentence. Each taste word is swapped for a word of a random other taste with
  probability 0.15, so text is informative but not a label;
* *category*, e.g. "Apparel > Scarves";
* *image*, an ``image_size`` x ``image_size`` RGB PNG: a pastel background and one filled shape, both
  in the taste's hue (plus noise in hue, saturation and brightness), the shape's form given by the
  domain (circle, square, triangle, diamond), with blocky texture noise. The mean colour of an image
  tells its taste;
* *price*, log-normal around ``domain base x level multiplier x taste multiplier`` (each taste has
  its own price tendency), rounded to cents.

Missing values are part of the demo: 3% of the items have no price (null), 2% have no image
(``images == []``, no file written) and 1% have no description (null). The counts are exact
(rounded), the items chosen at random.

**Popularity, succession and the long tail.** Within each taste the items are ranked by popularity
at random: the item of rank r is drawn with probability proportional to 1 / (r + 1) (Zipf-like).
The least popular 30% of each taste are *niche* items, drawn a further 0.3 times as often: most are
seen only once or twice, some never. They are the rare and cold items of the demo. The other
(regular) items of the taste form a *chain*, a random cyclic order independent of popularity, in
which item k tends to be followed by item k+1, k+2 or k+3.

**Users.** Each user likes one taste, and with probability 0.6 a second one. A user's sequence has a
length drawn uniformly from ``seq_len_range``. The first item is a popular item of the user's first
taste; every next item is drawn from the current one as follows:

* with probability 0.75 the taste stays. Then, if the current item is on the chain, with probability
  0.6 the user follows the chain (k -> k+1, k+2, k+3 with probabilities 0.6, 0.25, 0.15);
  otherwise the user draws an item of the taste by popularity;
* with probability 0.25 the taste switches: to the user's other taste (back to the first taste when
  the current one is not the user's, or to a random taste for a one-taste user), except that with
  probability 0.15 it goes to a random other taste instead (exploration). The item is drawn by
  popularity within the new taste.

So about 75% of consecutive pairs share a taste and about 45% are chain steps. The chain rewards
models that look at order (a first-order transition model has a hit rate at 10 more than four times
that of popularity on the default data); after a niche item, whose ID says next to nothing, a model
that reads its taste from the text or the image can still predict the next taste.

**Time.** Each user starts at a random moment in the 30 days after 2024-01-01 00:00 UTC; the gaps
between events are whole seconds, log-normal around three hours, and 2% of them are exactly zero
(ties, for which the row order of the file is the tie-breaker). Events of a user appear in the file
in sequence order, but the rows of different users are interleaved at random.

Everything is drawn from ``numpy.random.Generator`` streams derived from ``seed``: the same
arguments give identical tables and byte-identical image files. ``sample_demo_world`` returns the
latent truth (tastes, chains, niche items, the sequences) without writing anything, e.g. for tests or to inspect
what a model should have learned.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from mmrec.data.schema import Catalogue, RawDataset, make_interactions

DEMO_NAME = "demo"

EPOCH_2024 = 1_704_067_200.0  # 2024-01-01 00:00:00 UTC

# --- the vocabulary -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Taste:
    name: str
    hue: float  # degrees
    colours: tuple[str, ...]
    moods: tuple[str, ...]


# 16 named hues, 22.5 degrees apart; n tastes take the names nearest to 360 * k / n.
_TASTES = (
    _Taste("crimson", 0.0, ("red", "scarlet", "ruby"), ("fiery", "bold", "passionate")),
    _Taste("coral", 22.5, ("coral", "salmon", "peach"), ("tropical", "playful", "sunny")),
    _Taste("amber", 45.0, ("amber", "orange", "honey"), ("warm", "autumnal", "cosy")),
    _Taste("mustard", 67.5, ("mustard", "golden", "yellow"), ("retro", "cheerful", "vintage")),
    _Taste("lime", 90.0, ("lime", "chartreuse", "citrus"), ("fresh", "zesty", "energetic")),
    _Taste("moss", 112.5, ("moss", "olive", "khaki"), ("rustic", "earthy", "outdoorsy")),
    _Taste("forest", 135.0, ("green", "emerald", "pine"), ("natural", "woodland", "calm")),
    _Taste("jade", 157.5, ("jade", "mint", "seafoam"), ("serene", "zen", "airy")),
    _Taste("lagoon", 180.0, ("teal", "turquoise", "aqua"), ("breezy", "coastal", "cool")),
    _Taste("sky", 202.5, ("azure", "cerulean", "skyblue"), ("light", "dreamy", "open")),
    _Taste("ocean", 225.0, ("blue", "navy", "cobalt"), ("nautical", "deep", "classic")),
    _Taste("indigo", 247.5, ("indigo", "midnight", "denim"), ("moody", "urban", "sleek")),
    _Taste("violet", 270.0, ("violet", "purple", "lavender"), ("mystic", "whimsical", "soft")),
    _Taste("plum", 292.5, ("plum", "amethyst", "grape"), ("regal", "luxurious", "rich")),
    _Taste("orchid", 315.0, ("orchid", "magenta", "fuchsia"), ("vibrant", "glamorous", "daring")),
    _Taste("rose", 337.5, ("rose", "pink", "blush"), ("romantic", "gentle", "sweet")),
)
MAX_TASTES = len(_TASTES)


@dataclass(frozen=True)
class _Domain:
    name: str
    shape: str
    nouns: tuple[tuple[str, str], ...]  # (noun, subcategory)
    phrase: str
    base_price: float


_DOMAINS = (
    _Domain(
        "apparel",
        "circle",
        (("scarf", "Scarves"), ("jacket", "Jackets"), ("sweater", "Knitwear"), ("dress", "Dresses"),
         ("beanie", "Hats"), ("sneaker", "Shoes")),
        "made for everyday wear",
        40.0,
    ),
    _Domain(
        "books",
        "square",
        (("novel", "Fiction"), ("journal", "Stationery"), ("atlas", "Travel"), ("cookbook", "Cooking"),
         ("sketchbook", "Art"), ("planner", "Stationery")),
        "made for your bookshelf",
        18.0,
    ),
    _Domain(
        "garden",
        "triangle",
        (("planter", "Pots"), ("lantern", "Lighting"), ("watering can", "Tools"), ("cushion", "Furniture"),
         ("birdhouse", "Wildlife"), ("hammock", "Furniture")),
        "made for the garden",
        35.0,
    ),
    _Domain(
        "kitchen",
        "diamond",
        (("mug", "Drinkware"), ("kettle", "Appliances"), ("teapot", "Drinkware"), ("bowl", "Tableware"),
         ("apron", "Textiles"), ("skillet", "Cookware")),
        "made for the kitchen",
        25.0,
    ),
)

_MATERIALS = ("velvet", "linen", "ceramic", "oak", "cotton", "glass", "bamboo", "wool", "enamel", "recycled")
_LEVEL_NAMES = ("budget", "standard", "premium")
_LEVEL_PROBS = (0.35, 0.45, 0.20)
_LEVEL_MULTIPLIERS = (0.6, 1.0, 1.9)
_LEVEL_PHRASES = ("Great value.", "Reliable quality.", "Premium, handcrafted quality.")
_FILLERS = (
    "Ships in two days.", "A customer favourite.", "Limited stock.", "Easy to care for.", "Gift ready.",
    "New this season.", "", "",
)

# --- the generative parameters (see the module docstring) -------------------------------------------

P_STAY = 0.75  # the next item keeps the current taste
P_CHAIN = 0.6  # given the taste stays: follow the chain rather than draw a popular item
CHAIN_STEPS = (1, 2, 3)
CHAIN_STEP_PROBS = (0.6, 0.25, 0.15)
P_EXPLORE = 0.15  # given the taste switches: to a random other taste
P_SECOND_TASTE = 0.6
ZIPF_EXPONENT = 1.0
NICHE_FRACTION = 0.3  # of each taste's items: the least popular, outside the chain
NICHE_WEIGHT = 0.3  # niche items are drawn this much less often than their Zipf weight says
P_WORD_NOISE = 0.15
P_TIE = 0.02
GAP_MEDIAN_S = 3 * 3600.0
GAP_LOG_SIGMA = 1.5
START_SPREAD_S = 30 * 86400.0
MISSING_PRICE = 0.03
MISSING_IMAGE = 0.02
MISSING_DESCRIPTION = 0.01
HUE_NOISE_DEG = 6.0

_STREAMS = ("items", "users", "rows", "text", "images")


def _pick_tastes(n_tastes: int) -> list[_Taste]:
    """The ``n_tastes`` named tastes whose hues are nearest to ``360 * k / n_tastes``."""
    picks = np.round(np.arange(n_tastes) * len(_TASTES) / n_tastes).astype(int)
    return [_TASTES[i] for i in picks]


# --- the latent world -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoWorld:
    """The latent truth behind a demo dataset; item ``i`` has id ``item_ids[i]``, user ``u`` ``user_ids[u]``.

    The sequences are stored flat, grouped by user and in sequence order: ``seq_users``,
    ``seq_items`` and ``seq_times`` are parallel arrays of item / user indices and timestamps.
    """

    taste_names: tuple[str, ...]
    taste_hues: np.ndarray  # (n_tastes,) degrees
    domain_names: tuple[str, ...]
    item_ids: tuple[str, ...]
    item_taste: np.ndarray  # (n_items,) taste index
    item_domain: np.ndarray  # (n_items,) domain index
    item_level: np.ndarray  # (n_items,) price level index (0 budget, 1 standard, 2 premium)
    item_price: np.ndarray  # (n_items,) float64, NaN where the price is missing
    item_has_image: np.ndarray  # (n_items,) bool
    item_has_description: np.ndarray  # (n_items,) bool
    item_chain_pos: np.ndarray  # (n_items,) position of the item in its taste's chain, -1 for niche items
    item_pop_rank: np.ndarray  # (n_items,) popularity rank within its taste (0 = most popular)
    item_niche: np.ndarray  # (n_items,) bool: rare by construction, outside the chain
    user_ids: tuple[str, ...]
    user_tastes: np.ndarray  # (n_users, 2) taste indices; column 1 is -1 for one-taste users
    seq_users: np.ndarray
    seq_items: np.ndarray
    seq_times: np.ndarray  # float64 seconds since the epoch, non-decreasing within a user


def _check_args(n_users: int, n_items: int, n_tastes: int, seq_len_range: tuple[int, int], image_size: int) -> None:
    if not 2 <= n_tastes <= MAX_TASTES:
        raise ValueError(f"n_tastes must be between 2 and {MAX_TASTES}, got {n_tastes}")
    if n_items < 4 * n_tastes:
        raise ValueError(f"n_items must be at least 4 * n_tastes = {4 * n_tastes}, got {n_items}")
    if n_users < 1:
        raise ValueError(f"n_users must be at least 1, got {n_users}")
    lo, hi = seq_len_range
    if not 2 <= lo <= hi:
        raise ValueError(f"seq_len_range must be (lo, hi) with 2 <= lo <= hi, got {seq_len_range}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")


def _streams(seed: int) -> dict[str, np.random.Generator]:
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children)}


def _ids(prefix: str, n: int) -> tuple[str, ...]:
    width = max(4, len(str(n - 1)))
    return tuple(f"{prefix}{i:0{width}d}" for i in range(n))


def _exact_mask(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """A boolean mask with exactly ``round(rate * n)`` True entries at random places."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=int(round(rate * n)), replace=False)] = True
    return mask


def sample_demo_world(
    *,
    n_users: int = 1500,
    n_items: int = 600,
    n_tastes: int = 8,
    seq_len_range: tuple[int, int] = (8, 40),
    seed: int = 0,
) -> DemoWorld:
    """Draw the latent world of ``generate_demo`` (same arguments, same world), writing nothing."""
    _check_args(n_users, n_items, n_tastes, seq_len_range, 8)
    rngs = _streams(seed)

    tastes = _pick_tastes(n_tastes)
    hues = np.array([t.hue for t in tastes])

    # items
    rng = rngs["items"]
    item_taste = rng.permutation(np.arange(n_items) % n_tastes)
    item_domain = rng.integers(len(_DOMAINS), size=n_items)
    item_level = rng.choice(len(_LEVEL_NAMES), size=n_items, p=_LEVEL_PROBS)
    taste_price = np.exp(rng.normal(0.0, 0.25, size=n_tastes))
    base = np.array([d.base_price for d in _DOMAINS])[item_domain]
    level = np.array(_LEVEL_MULTIPLIERS)[item_level]
    price = np.round(base * level * taste_price[item_taste] * np.exp(rng.normal(0.0, 0.25, size=n_items)), 2)
    price[_exact_mask(rng, n_items, MISSING_PRICE)] = np.nan
    has_image = ~_exact_mask(rng, n_items, MISSING_IMAGE)
    has_description = ~_exact_mask(rng, n_items, MISSING_DESCRIPTION)

    # per taste: a popularity rank; the least popular items are niche, the others form a chain
    size = np.bincount(item_taste, minlength=n_tastes)
    n_regular = np.maximum(size - np.round(NICHE_FRACTION * size).astype(int), np.minimum(size, 4))
    width = int(size.max())
    by_pop = np.full((n_tastes, width), -1, dtype=np.int64)  # by_pop[t, r] = item of rank r
    chain = np.full((n_tastes, width), -1, dtype=np.int64)  # chain[t, k] = item at position k
    pop_rank = np.empty(n_items, dtype=np.int64)
    chain_pos = np.full(n_items, -1, dtype=np.int64)
    for t in range(n_tastes):
        members = rng.permutation(np.flatnonzero(item_taste == t))
        by_pop[t, : size[t]] = members
        pop_rank[members] = np.arange(size[t])
        regular = rng.permutation(members[: n_regular[t]])  # chain order independent of popularity
        chain[t, : n_regular[t]] = regular
        chain_pos[regular] = np.arange(n_regular[t])
    ranks = np.arange(width)[None, :]
    weights = 1.0 / (ranks + 1.0) ** ZIPF_EXPONENT
    weights = np.where(ranks >= n_regular[:, None], NICHE_WEIGHT * weights, weights)
    weights = np.where(ranks < size[:, None], weights, 0.0)
    pop_cdf = np.cumsum(weights, axis=1) / weights.sum(axis=1, keepdims=True)
    pop_cdf[:, -1] = 1.0

    # users and their walks, all users at once, one step at a time
    rng = rngs["users"]
    first = rng.integers(n_tastes, size=n_users)
    second = np.where(
        rng.random(n_users) < P_SECOND_TASTE, (first + rng.integers(1, n_tastes, size=n_users)) % n_tastes, -1
    )
    lo, hi = seq_len_range
    lengths = rng.integers(lo, hi + 1, size=n_users)

    def popular(taste: np.ndarray) -> np.ndarray:
        u = rng.random(len(taste))
        rank = np.minimum((pop_cdf[taste] < u[:, None]).sum(axis=1), size[taste] - 1)
        return by_pop[taste, rank]

    def random_other(taste: np.ndarray) -> np.ndarray:
        return (taste + rng.integers(1, n_tastes, size=len(taste))) % n_tastes

    walk = np.empty((n_users, hi), dtype=np.int64)
    cur_taste = first.copy()
    cur_item = popular(cur_taste)
    walk[:, 0] = cur_item
    for step in range(1, hi):
        switch = rng.random(n_users) >= P_STAY
        explore = rng.random(n_users) < P_EXPLORE
        other = np.where(cur_taste == first, second, first)  # -1: a one-taste user at home
        target = np.where(explore | (other < 0), random_other(cur_taste), other)
        new_taste = np.where(switch, target, cur_taste)
        on_chain = chain_pos[cur_item] >= 0
        follow = ~switch & on_chain & (rng.random(n_users) < P_CHAIN)
        hop = rng.choice(CHAIN_STEPS, size=n_users, p=CHAIN_STEP_PROBS)
        successor = chain[cur_taste, np.where(on_chain, (chain_pos[cur_item] + hop) % n_regular[cur_taste], 0)]
        cur_item = np.where(follow, successor, popular(new_taste))
        cur_taste = new_taste
        walk[:, step] = cur_item

    keep = np.arange(hi)[None, :] < lengths[:, None]
    seq_users = np.repeat(np.arange(n_users), lengths)
    seq_items = walk[keep]

    gaps = np.round(np.exp(np.log(GAP_MEDIAN_S) + GAP_LOG_SIGMA * rng.standard_normal((n_users, hi))))
    gaps[rng.random((n_users, hi)) < P_TIE] = 0.0
    gaps[:, 0] = np.round(rng.random(n_users) * START_SPREAD_S)
    times = EPOCH_2024 + np.cumsum(gaps, axis=1)
    seq_times = times[keep]

    return DemoWorld(
        taste_names=tuple(t.name for t in tastes),
        taste_hues=hues,
        domain_names=tuple(d.name for d in _DOMAINS),
        item_ids=_ids("i", n_items),
        item_taste=item_taste,
        item_domain=item_domain,
        item_level=item_level,
        item_price=price,
        item_has_image=has_image,
        item_has_description=has_description,
        item_chain_pos=chain_pos,
        item_pop_rank=pop_rank,
        item_niche=chain_pos < 0,
        user_ids=_ids("u", n_users),
        user_tastes=np.stack([first, second], axis=1),
        seq_users=seq_users,
        seq_items=seq_items,
        seq_times=seq_times,
    )


# --- rendering: text, images, tables ----------------------------------------------------------------


def _render_text(world: DemoWorld, rng: np.random.Generator) -> tuple[list[str], list[str | None], list[str]]:
    """Titles, descriptions (None where missing) and categories of all items."""
    tastes = _pick_tastes(len(world.taste_names))
    n_tastes = len(tastes)

    def taste_word(t: int, kind: str) -> str:
        if rng.random() < P_WORD_NOISE:
            t = int((t + rng.integers(1, n_tastes)) % n_tastes)
        words = getattr(tastes[t], kind)
        return str(words[rng.integers(len(words))])

    titles: list[str] = []
    descriptions: list[str | None] = []
    categories: list[str] = []
    for i in range(len(world.item_ids)):
        t, dom = int(world.item_taste[i]), _DOMAINS[int(world.item_domain[i])]
        noun, subcategory = dom.nouns[rng.integers(len(dom.nouns))]
        material = _MATERIALS[rng.integers(len(_MATERIALS))]
        colour = taste_word(t, "colours")
        titles.append(f"{colour.capitalize()} {material} {noun}")
        mood, colour2 = taste_word(t, "moods"), taste_word(t, "colours")
        filler = _FILLERS[rng.integers(len(_FILLERS))]
        article = "An" if mood[0] in "aeiou" else "A"
        text = (
            f"{article} {mood} {colour2} {noun} in {material}, {dom.phrase}. "
            f"{_LEVEL_PHRASES[int(world.item_level[i])]} {filler}"
        ).strip()
        descriptions.append(text if world.item_has_description[i] else None)
        categories.append(f"{dom.name.capitalize()} > {subcategory}")
    return titles, descriptions, categories


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return x**2 + y**2 < r**2
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) < 0.85 * r
    if shape == "triangle":  # apex up, base at 0.8 r below the centre
        return (y < 0.8 * r) & (np.abs(x) < 0.6 * (y + r))
    if shape == "diamond":
        return np.abs(x) + np.abs(y) < 1.1 * r
    raise ValueError(f"unknown shape {shape!r}")


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)))


def _render_image(
    rng: np.random.Generator, hue: float, shape: str, grid: tuple[np.ndarray, np.ndarray], size: int
) -> np.ndarray:
    """One (size, size, 3) uint8 image: pastel background and a shape, both in (about) ``hue``."""
    h = hue + rng.normal(0.0, HUE_NOISE_DEG)
    s, v = rng.uniform(0.6, 0.85), rng.uniform(0.7, 0.92)
    fg = _hsv(h, s, v)
    bg = _hsv(h + rng.normal(0.0, HUE_NOISE_DEG / 2), s * rng.uniform(0.3, 0.5), rng.uniform(0.85, 0.97))
    cx, cy = rng.uniform(-0.2, 0.2, size=2)
    r = rng.uniform(0.45, 0.65)
    xx, yy = grid
    mask = _shape_mask(shape, xx - cx, yy - cy, r)
    img = np.where(mask[:, :, None], fg, bg) * 255.0
    block = max(1, size // 8)  # blocky texture: cheap to draw, compresses well
    coarse = rng.normal(0.0, 8.0, size=(-(-size // block), -(-size // block), 3))
    img += np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)[:size, :size]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _write_images(world: DemoWorld, rng: np.random.Generator, image_dir: Path, size: int) -> list[list[str]]:
    """Write one PNG per item that has an image; return the ``images`` column (absolute paths)."""
    image_dir.mkdir(parents=True, exist_ok=True)
    axis = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    grid = (axis[None, :].repeat(size, axis=0), axis[:, None].repeat(size, axis=1))
    column: list[list[str]] = []
    for i, item_id in enumerate(world.item_ids):
        # draw every item's image, written or not, so that one item's absence does not shift the others
        pixels = _render_image(
            rng, float(world.taste_hues[world.item_taste[i]]), _DOMAINS[int(world.item_domain[i])].shape, grid, size
        )
        if not world.item_has_image[i]:
            column.append([])
            continue
        path = image_dir / f"{item_id}.png"
        Image.fromarray(pixels).save(path, format="PNG")
        column.append([str(path)])
    return column


def _interleave(world: DemoWorld, rng: np.random.Generator) -> np.ndarray:
    """A row order mixing the users at random while each user's events keep their sequence order."""
    n = len(world.seq_users)
    slot_user = world.seq_users[rng.permutation(n)]  # which user each output row belongs to
    slots = np.argsort(slot_user, kind="stable")  # the rows of user 0 in order, then user 1, ...
    order = np.empty(n, dtype=np.int64)
    order[slots] = np.arange(n)  # seq_* are grouped by user in sequence order, like ``slots``
    return order


def generate_demo(
    out_dir: str | Path,
    *,
    n_users: int = 1500,
    n_items: int = 600,
    n_tastes: int = 8,
    seq_len_range: tuple[int, int] = (8, 40),
    image_size: int = 64,
    seed: int = 0,
) -> RawDataset:
    """Generate the demo dataset: write its images under ``out_dir/images/`` and return its tables.

    The catalogue has text fields ``description`` and ``category``, absolute image paths and
    ``image_root = out_dir/images``; the interactions have ``user_id``, ``item_id`` and
    ``timestamp`` (seconds since the epoch). See the module docstring for what the data contain.
    Existing files in ``out_dir/images/`` named like this dataset's images are overwritten.
    """
    _check_args(n_users, n_items, n_tastes, seq_len_range, image_size)
    world = sample_demo_world(
        n_users=n_users, n_items=n_items, n_tastes=n_tastes, seq_len_range=seq_len_range, seed=seed
    )
    rngs = _streams(seed)
    image_dir = Path(out_dir).resolve() / "images"

    titles, descriptions, categories = _render_text(world, rngs["text"])
    images = _write_images(world, rngs["images"], image_dir, image_size)
    catalogue = Catalogue.build(
        list(world.item_ids),
        title=titles,
        text={"description": descriptions, "category": categories},
        images=images,
        price=pa.array(world.item_price, from_pandas=True),  # NaN -> null
        domain=[world.domain_names[d] for d in world.item_domain],
        image_root=image_dir,
    )

    order = _interleave(world, rngs["rows"])
    user_ids = np.array(world.user_ids)[world.seq_users[order]]
    item_ids = np.array(world.item_ids)[world.seq_items[order]]
    interactions = make_interactions(
        {
            "user_id": pa.array(user_ids, type=pa.string()),
            "item_id": pa.array(item_ids, type=pa.string()),
            "timestamp": pa.array(world.seq_times[order], type=pa.float64()),
        }
    )
    source = {
        "generator": "mmrec.data.demo.generate_demo",
        "seed": seed,
        "n_users": n_users,
        "n_items": n_items,
        "n_tastes": n_tastes,
        "seq_len_range": [int(seq_len_range[0]), int(seq_len_range[1])],
        "image_size": image_size,
        "tastes": list(world.taste_names),
        "domains": list(world.domain_names),
    }
    return RawDataset(
        name=DEMO_NAME,
        interactions=interactions,
        catalogue=catalogue,
        time_is_order=False,
        source=source,
    )
