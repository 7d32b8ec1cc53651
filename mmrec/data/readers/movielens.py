"""Format ``movielens``: the GroupLens MovieLens files.

Expected folder layout (ml-1m; ml-10m is the same without ``users.dat``)::

    <folder>/
      ratings.dat   UserID::MovieID::Rating::Timestamp      one rating per line, unix seconds
      movies.dat    MovieID::Title::Genres                 genres separated by "|", e.g.
                                                           1::Toy Story (1995)::Animation|Children's|Comedy
      users.dat     UserID::Gender::Age::Occupation::Zip   optional
      posters/<MovieID>.jpg                                optional, one image per movie (.jpeg/.png too)

The ``.dat`` files of ml-1m are latin-1; ``encoding: auto`` (the default) reads UTF-8 and falls back to
latin-1. The newer CSV layout (ml-20m, ml-25m, ml-latest: ``ratings.csv`` with a
``userId,movieId,rating,timestamp`` header, ``movies.csv`` with ``movieId,title,genres``) is read too
when there is no ``ratings.dat``.

Result:
  interactions  user_id, item_id (the ids as written), timestamp (unix seconds), rating
  catalogue     every movie of movies.dat; title as written (the year stays in it, e.g.
                "Toy Story (1995)"); text fields ``genres`` ("Animation, Children's, Comedy") and
                ``year`` ("1995", parsed from the title; null when the title has none);
                images ``["posters/<MovieID>.jpg"]`` relative to ``image_root`` (the folder) when the
                poster exists, else ``[]``
  users         user_id, gender, age, occupation, zip (users.dat), when present

Options:
  encoding      "auto" (default), or a codec name such as "latin-1" or "utf-8"
  posters_dir   folder of the poster images, relative to the dataset folder (default "posters")
  name          dataset name (default: the folder name)
  domain        the catalogue ``domain`` of each movie, from its genres (default: none, domain null):
                  "first"     the first genre listed in movies.dat ("Animation|Children's|Comedy":
                              Animation)
                  "rarest"    the movie's genre listed for the fewest movies of the catalogue
                  "commonest" the movie's genre listed for the most movies of the catalogue
                (ties between genres go to the one listed first). A movie without genres gets null.
  domain_genres optional list of genres that may be a domain, e.g. [Comedy, Drama, Action]: the
                other genres are ignored when choosing, and a movie with none of the listed genres
                gets the domain ``domain_other``. With ``domain: first`` the list is a priority
                order: the movie's domain is the first genre of the list it has.
  domain_other  the domain of the movies left without one by ``domain_genres`` (default "Other")

A line with the wrong number of fields or a non-numeric id, rating or timestamp raises DataError with
the file and line number.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from mmrec.data.readers._common import (
    as_path,
    check_list_option,
    check_options,
    decode,
    image_lists,
    iter_lines,
    read_bytes,
    require_dir,
)
from mmrec.data.schema import Catalogue, RawDataset, ReadReport, make_interactions
from mmrec.errors import ConfigError, DataError

FORMAT = "movielens"
LAYOUT = "a MovieLens folder with ratings.dat (UserID::MovieID::Rating::Timestamp) and movies.dat"
OPTIONS: dict[str, Any] = {"encoding": "auto", "posters_dir": "posters", "name": None, "domain": None,
                           "domain_genres": None, "domain_other": "Other"}
DOMAIN_RULES = ("first", "rarest", "commonest")

_SEP = b"\x1f"  # stands in for "::" so pyarrow can split on one byte
_YEAR_RE = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_NO_GENRES = "(no genres listed)"
_RATING_FIELDS = "UserID::MovieID::Rating::Timestamp"


def read_movielens(path: str | Path, **options: Any) -> RawDataset:
    """Read a MovieLens folder (see the module docstring for the layout and options)."""
    opts = check_options(FORMAT, options, OPTIONS)
    _check_domain_options(opts)
    folder = require_dir(as_path(path), FORMAT, LAYOUT)
    report = ReadReport()

    if (folder / "ratings.dat").is_file():
        ratings_path = folder / "ratings.dat"
        interactions = _read_ratings_dat(ratings_path)
        movies_path = folder / "movies.dat"
        users_path: Path | None = folder / "users.dat"
    elif (folder / "ratings.csv").is_file():
        ratings_path = folder / "ratings.csv"
        interactions = _read_ratings_csv(ratings_path)
        movies_path = folder / "movies.csv"
        users_path = None
    else:
        raise DataError("no ratings.dat (or ratings.csv) in the folder", path=str(folder), hint=f"expected {LAYOUT}")

    catalogue = None
    if movies_path.is_file():
        if movies_path.suffix == ".csv":
            ids, titles, genres = _read_movies_csv(movies_path)
        else:
            ids, titles, genres = _read_movies_dat(movies_path, opts["encoding"])
        domains = genre_domains(genres, opts["domain"], opts["domain_genres"], opts["domain_other"])
        catalogue = _build_catalogue(folder, ids, titles, genres, opts["posters_dir"], report, movies_path, domains)
    else:
        report.add("read", 0, f"no {movies_path.name}: no catalogue", file=str(movies_path))

    users = None
    if users_path is not None and users_path.is_file():
        users = _read_users_dat(users_path, opts["encoding"])

    files = {"ratings": str(ratings_path)}
    if catalogue is not None:
        files["movies"] = str(movies_path)
    if users is not None:
        files["users"] = str(users_path)
    return RawDataset(
        name=opts["name"] or folder.resolve().name,
        interactions=interactions,
        catalogue=catalogue,
        users=users,
        time_is_order=False,
        report=report,
        source={"format": FORMAT, "path": str(folder), "files": files},
    )


# --------------------------------------------------------------------------- ratings


def _read_ratings_dat(path: Path) -> pa.Table:
    data = read_bytes(path)
    if _SEP in data:  # the stand-in byte must not occur in the data; it never does in GroupLens files
        _scan_ratings(path, data)
        raise DataError("the file contains the control byte 0x1f", path=str(path), hint="remove it")
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data.replace(b"::", _SEP)),
            read_options=pacsv.ReadOptions(column_names=["user_id", "item_id", "rating", "timestamp"]),
            parse_options=pacsv.ParseOptions(delimiter=_SEP.decode(), quote_char=False, double_quote=False),
            convert_options=pacsv.ConvertOptions(
                column_types={
                    "user_id": pa.int64(),
                    "item_id": pa.int64(),
                    "rating": pa.float64(),
                    "timestamp": pa.int64(),
                },
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        _scan_ratings(path, data)  # raises with the exact line
        raise DataError(f"cannot parse the file: {e}", path=str(path), hint=f"each line must be {_RATING_FIELDS}") from None
    if any(table.column(c).null_count for c in table.column_names):
        _scan_ratings(path, data)
        raise DataError("the file has empty fields", path=str(path), hint=f"each line must be {_RATING_FIELDS}")
    return make_interactions(
        {
            "user_id": table.column("user_id").cast(pa.string()),
            "item_id": table.column("item_id").cast(pa.string()),
            "timestamp": table.column("timestamp").cast(pa.float64()),
            "rating": table.column("rating"),
        }
    )


def _scan_ratings(path: Path, data: bytes) -> None:
    """Find the first malformed line with a plain Python scan and raise DataError for it."""
    for lineno, raw in enumerate(data.splitlines(), start=1):
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        parts = line.split(b"::")
        shown = line.decode("latin-1")
        if len(parts) != 4:
            raise DataError(
                f"expected 4 fields {_RATING_FIELDS}, found {len(parts)}: {shown!r}",
                path=str(path),
                line=lineno,
                hint="fix or delete this line",
            )
        for name, value, kind in zip(("UserID", "MovieID", "Rating", "Timestamp"), parts, (int, int, float, int)):
            try:
                kind(value)
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise DataError(
                    f"{name} must be {what}, got {value.decode('latin-1')!r} in {shown!r}",
                    path=str(path),
                    line=lineno,
                    hint="fix or delete this line",
                ) from None


def _read_ratings_csv(path: Path) -> pa.Table:
    cols = {"userId": pa.string(), "movieId": pa.string(), "rating": pa.float64(), "timestamp": pa.int64()}
    try:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=cols, include_columns=list(cols)))
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as e:
        raise DataError(
            f"cannot parse the file: {e}", path=str(path), hint="expected a header userId,movieId,rating,timestamp"
        ) from None
    for c in ("userId", "movieId", "timestamp"):
        nulls = table.column(c).is_null().to_numpy(zero_copy_only=False)
        if nulls.any():
            row = int(np.flatnonzero(nulls)[0])
            raise DataError(f"empty {c}", path=str(path), line=row + 2, hint="fix or delete this line")
    return make_interactions(
        {
            "user_id": table.column("userId"),
            "item_id": table.column("movieId"),
            "timestamp": table.column("timestamp").cast(pa.float64()),
            "rating": table.column("rating"),
        }
    )


# --------------------------------------------------------------------------- movies, users


def _read_movies_dat(path: Path, encoding: str) -> tuple[list[str], list[str], list[str | None]]:
    text = decode(read_bytes(path), path, encoding)
    ids: list[str] = []
    titles: list[str] = []
    genres: list[str | None] = []
    for lineno, line in iter_lines(text):
        if not line.strip():
            continue
        first = line.find("::")
        last = line.rfind("::")
        if first < 0 or last == first:
            raise DataError(
                f"expected 3 fields MovieID::Title::Genres: {line!r}", path=str(path), line=lineno, hint="fix or delete this line"
            )
        movie_id = line[:first].strip()
        if not movie_id.isdigit():
            raise DataError(f"MovieID must be an integer, got {movie_id!r}", path=str(path), line=lineno, hint="fix or delete this line")
        ids.append(str(int(movie_id)))
        titles.append(line[first + 2 : last].strip())
        genres.append(_genres(line[last + 2 :]))
    return ids, titles, genres


def _read_movies_csv(path: Path) -> tuple[list[str], list[str], list[str | None]]:
    cols = {"movieId": pa.string(), "title": pa.string(), "genres": pa.string()}
    try:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=cols, include_columns=list(cols)))
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as e:
        raise DataError(f"cannot parse the file: {e}", path=str(path), hint="expected a header movieId,title,genres") from None
    titles = [t.strip() if t else t for t in table.column("title").to_pylist()]
    return table.column("movieId").to_pylist(), titles, [_genres(g) for g in table.column("genres").to_pylist()]


def _genres(raw: str | None) -> str | None:
    if raw is None:
        return None
    parts = [g.strip() for g in raw.strip().split("|") if g.strip() and g.strip() != _NO_GENRES]
    return ", ".join(parts) if parts else None


def _build_catalogue(
    folder: Path,
    ids: list[str],
    titles: list[str],
    genres: list[str | None],
    posters_dir: str,
    report: ReadReport,
    movies_path: Path,
    domains: list[str | None] | None = None,
) -> Catalogue:
    years: list[str | None] = []
    for t in titles:
        m = _YEAR_RE.search(t or "")
        years.append(m.group(1) if m else None)
    poster_folder = folder / posters_dir
    images: list[list[str]] = [[] for _ in ids]
    if poster_folder.is_dir():
        found: dict[str, str] = {}
        with os.scandir(poster_folder) as it:
            for e in it:
                stem, ext = os.path.splitext(e.name)
                if ext.lower() in (".jpg", ".jpeg", ".png", ".webp") and e.is_file():
                    if stem not in found or ext.lower() == ".jpg":
                        found[stem] = e.name
        images = image_lists(ids, found, prefix=f"{posters_dir.rstrip('/')}/")
        missing = sum(1 for im in images if not im)
        if missing:
            report.add("read", missing, f"movies without a poster in {posters_dir}/ (kept, images=[])", file=str(movies_path))
    if any(t is not None and not t for t in titles):
        titles = [t or None for t in titles]
    dup = len(ids) - len(set(ids))
    if dup:
        seen: set[str] = set()
        keep = [not (i in seen or seen.add(i)) for i in ids]  # type: ignore[func-returns-value]
        ids, titles, genres, years, images = (
            [v for v, k in zip(col, keep) if k] for col in (ids, titles, genres, years, images)
        )
        if domains is not None:
            domains = [v for v, k in zip(domains, keep) if k]
        report.add("read", dup, f"duplicate MovieIDs in {movies_path.name}: kept the first", file=str(movies_path))
    return Catalogue.build(
        ids,
        title=titles,
        text={"genres": genres, "year": years},
        images=images,
        domain=domains,
        image_root=str(folder.resolve()),
    )


def _check_domain_options(opts: dict[str, Any]) -> None:
    rule, listed = opts["domain"], opts["domain_genres"]
    if rule is not None and rule not in DOMAIN_RULES:
        raise ConfigError(f"format 'movielens': domain must be one of {', '.join(DOMAIN_RULES)} (or unset), not {rule!r}")
    if listed is not None:
        if rule is None:
            raise ConfigError("format 'movielens': domain_genres needs a domain rule (domain: first, rarest or commonest)")
        check_list_option(FORMAT, "domain_genres", listed, "genre names (not empty)", allow_empty=False)
    if not isinstance(opts["domain_other"], str) or not opts["domain_other"].strip():
        raise ConfigError("format 'movielens': domain_other must be a non-empty name")


def genre_domains(genres: list[str | None], rule: str | None, listed: list[str] | None = None,
                  other: str = "Other") -> list[str | None] | None:
    """Each movie's domain from its genres (``", "``-joined, as in the catalogue) under ``rule``
    (module docstring: first, rarest, commonest; None: no domains)."""
    if rule is None:
        return None
    split = [[g for g in (x or "").split(", ") if g] for x in genres]
    allowed = None if listed is None else [g.strip() for g in listed]
    count: dict[str, int] = {}
    for gs in split:
        for g in set(gs):
            count[g] = count.get(g, 0) + 1
    out: list[str | None] = []
    for gs in split:
        if not gs:
            out.append(None)
            continue
        if allowed is not None:
            if rule == "first":
                gs = [g for g in allowed if g in gs]
            else:
                gs = [g for g in gs if g in allowed]
            if not gs:
                out.append(other.strip())
                continue
        if rule == "first":
            out.append(gs[0])
        else:
            sign = 1 if rule == "rarest" else -1
            out.append(min(gs, key=lambda g: (sign * count[g], gs.index(g))))
    return out


def _read_users_dat(path: Path, encoding: str) -> pa.Table:
    text = decode(read_bytes(path), path, encoding)
    cols: dict[str, list[Any]] = {"user_id": [], "gender": [], "age": [], "occupation": [], "zip": []}
    for lineno, line in iter_lines(text):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 5:
            raise DataError(
                f"expected 5 fields UserID::Gender::Age::Occupation::Zip, found {len(parts)}: {line!r}",
                path=str(path),
                line=lineno,
                hint="fix or delete this line",
            )
        uid, gender, age, occ, zipcode = (p.strip() for p in parts)
        try:
            cols["user_id"].append(str(int(uid)))
            cols["age"].append(int(age) if age else None)
            cols["occupation"].append(int(occ) if occ else None)
        except ValueError:
            raise DataError(
                f"UserID, Age and Occupation must be integers: {line!r}", path=str(path), line=lineno, hint="fix or delete this line"
            ) from None
        cols["gender"].append(gender or None)
        cols["zip"].append(zipcode or None)
    return pa.table(
        {
            "user_id": pa.array(cols["user_id"], pa.string()),
            "gender": pa.array(cols["gender"], pa.string()),
            "age": pa.array(cols["age"], pa.int64()),
            "occupation": pa.array(cols["occupation"], pa.int64()),
            "zip": pa.array(cols["zip"], pa.string()),
        }
    )


__all__ = ["read_movielens", "OPTIONS", "FORMAT"]
