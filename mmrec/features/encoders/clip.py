"""``clip``: open_clip image and text towers, in one shared embedding space.

What it produces
----------------
``tower`` picks what is encoded (default ``image``):

* ``image``: each of an item's images (up to ``max_images``, default 4) goes through open_clip's
  evaluation transform for the model and the image tower; the item's embedding is the average over its
  images. Missing when no image can be read (reasons recorded, see ``images.load_rgb``).
* ``text``: the item text rendered with the template (as ``bert``, default ``"{title}. {categories}.
  {brand}."``), tokenised with the model's tokenizer (truncated to its context length, 77 for OpenAI
  models) and encoded by the text tower.
* ``both``: an item with images and text gets the MEAN of its L2-normalised image embedding and its
  L2-normalised text embedding (re-normalised when ``normalize``); an item with only one of them gets
  that one; an item with neither is Missing (both reasons recorded).

``pooling``:

* ``pooled`` (default): the projected embedding, ``[B, embed_dim]`` (512 for ViT-B-32), L2-normalised
  when ``normalize`` (default true).
* ``tokens``: the output of the tower's last transformer block for every token, before the final
  LayerNorm and projection (what ODMT keeps from ``hidden_states[12]``), ``[B, T, width]``, never
  normalised. Image tower: class token + patches, 50 x 768 for ViT-B-32 (ViT towers only). Text tower:
  one row per text position (T = option ``tokens``, default the context length), zeros after the end
  token. Not available with ``tower=both``.

Pointing at weights
-------------------
* ``model``: an open_clip model name (``open_clip.list_models()``, default ``ViT-B-32``), a local folder
  with ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``) and a checkpoint
  (``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, ...), or ``hf-hub:org/name``.
* ``weights=PATH`` (CLI ``--weights``): a local open_clip checkpoint (state dict: .safetensors, .bin, .pt)
  for that model; loaded with ``weights_only=True``. Weights trained with QuickGELU (OpenAI's) need
  ``quick_gelu=true`` or a ``*-quickgelu`` model name.
* otherwise the pretrained tag ``pretrained`` (default ``openai`` where the model has it) is fetched by
  open_clip: this needs the network or the Hugging Face cache, and fails with a ConfigError saying how
  to use a local copy when neither is there.

Other options: ``template``/``fields`` (text), ``max_images``, ``image_size``, ``max_pixels``,
``max_image_pixels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F

from mmrec.errors import ConfigError
from mmrec.features.base import Encoder, Missing

from ._common import (
    hub_failure,
    library_versions,
    local_path,
    looks_local,
    mean_by_owner,
    opt_bool,
    opt_choice,
    opt_int,
    quiet_logger,
    require,
    sha256_files,
)
from .images import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_PIXELS, ImageOptions, collate_images, images_to_tensor
from .text import render_or_missing, template_from_options

CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
PREPROCESS_FROM_TAG = ("mean", "std", "interpolation", "resize_mode")


def _open_clip() -> Any:
    return require("open_clip", extra="vision", dist="open_clip_torch")


class ClipEncoder(Encoder):
    """open_clip towers (see the module docstring)."""

    key: ClassVar[str] = "clip"
    modality: ClassVar[str] = "image"  # set per instance: image | text | image+text
    TOWERS: ClassVar[tuple[str, ...]] = ("image", "text", "both")
    DEFAULT_MODEL: ClassVar[str] = "ViT-B-32"

    def __init__(self, model: str | None = None, pooling: str | None = None, *, weights: str | None = None,
                 pretrained: str | None = None, tower: str = "image", tokens: int | None = None,
                 normalize: bool = True, template: str | None = None, fields: Sequence[str] | None = None,
                 max_images: int = 4, image_size: int | None = None, quick_gelu: bool | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self.tower = opt_choice("tower", tower, self.TOWERS)
        self.modality = {"image": "image", "text": "text", "both": "image+text"}[self.tower]  # type: ignore[misc]
        self.pooling = opt_choice("pooling", pooling or "pooled", ("pooled", "tokens"))
        if self.pooling == "tokens" and self.tower == "both":
            raise ConfigError("pooling=tokens needs tower=image or tower=text (image and text token sequences differ)")
        if tokens is not None and self.pooling != "tokens":
            raise ConfigError("encoder option tokens needs pooling=tokens")
        self._tokens_cap = opt_int("tokens", tokens, allow_none=True)
        self.normalize = opt_bool("normalize", normalize)
        self.template = template_from_options(template, fields)
        self.images = ImageOptions(max_images, max_pixels, max_image_pixels)
        self.image_size = opt_int("image_size", image_size, minimum=8, allow_none=True)
        self.weights = local_path(weights, "weights file") if weights is not None else None
        if self.weights is not None and not self.weights.is_file():
            raise ConfigError(f"weights {str(self.weights)!r} is not a file")
        if self.weights is not None and pretrained is not None:
            raise ConfigError("give either weights (a local file) or pretrained (an open_clip tag), not both")

        ref = model or self.DEFAULT_MODEL
        self.local_dir: Path | None = None
        self.tag: str | None = None
        if looks_local(ref):
            self.local_dir = local_path(ref, "model folder")
            if not (self.local_dir / "open_clip_config.json").is_file():
                raise ConfigError(f"model folder {self.local_dir} has no open_clip_config.json; give an open_clip "
                                  "model name with --weights FILE, or a folder in open_clip's hub layout")
            self.model_ref = str(self.local_dir)
            self._oc_name = f"local-dir:{self.local_dir}"
            if pretrained is not None:
                raise ConfigError("pretrained (a tag) does not apply to a local model folder; use weights=FILE")
        elif ref.startswith("hf-hub:"):
            self.model_ref = self._oc_name = ref
            if pretrained is not None:
                raise ConfigError("pretrained (a tag) does not apply to an hf-hub: model")
        else:
            oc = _open_clip()
            name = ref.replace("/", "-")
            if name not in oc.list_models():
                raise ConfigError(f"{ref!r} is not an open_clip model name (see open_clip.list_models()); for a "
                                  "local folder give its path, for the hub hf-hub:org/name")
            self.model_ref = self._oc_name = name
            if self.weights is None:
                tags = oc.list_pretrained_tags_by_model(name)
                if pretrained is None:
                    if not tags:
                        raise ConfigError(f"open_clip has no pretrained weights for {name}; pass --weights FILE")
                    pretrained = "openai" if "openai" in tags else tags[0]
                elif pretrained not in tags:
                    raise ConfigError(f"open_clip has no pretrained tag {pretrained!r} for {name}; tags: {', '.join(tags)}")
                self.tag = pretrained
        tag_cfg = _open_clip().get_pretrained_cfg(self._oc_name, self.tag) if self.tag else {}
        self.quick_gelu = bool(tag_cfg.get("quick_gelu", False)) if quick_gelu is None else opt_bool("quick_gelu", quick_gelu)
        self._force_pp = {k: tag_cfg[k] for k in PREPROCESS_FROM_TAG if tag_cfg.get(k) is not None}
        self._model: Any = None
        self._skeleton: Any = None
        self._tokenizer: Any = None
        self._transform: Any = None
        self._shape: tuple[int | None, int] | None = None
        self._loaded_file: Path | None = None
        self._ctx: int | None = None

    unpicklable = ("_model", "_skeleton")  # Encoder.__getstate__ leaves these out

    # -- building ------------------------------------------------------------------------------

    def _local_hint(self) -> str:
        return ("pass --weights PATH (an open_clip checkpoint for this model, e.g. open_clip_pytorch_model.bin from "
                "its hub repository), or --model DIR (a folder with open_clip_config.json and the checkpoint, e.g. "
                "from `huggingface-cli download <repo> --local-dir DIR` where there is network)")

    def _create(self, device: str) -> Any:
        oc = _open_clip()
        kwargs = dict(pretrained=None, load_weights=False, device=device, pretrained_image=False,
                      pretrained_text=False, force_quick_gelu=self.quick_gelu, force_image_size=self.image_size,
                      force_preprocess_cfg=self._force_pp or None)
        try:
            with quiet_logger():
                if device == "meta":
                    with torch.device("meta"):
                        return oc.create_model(self._oc_name, **kwargs)
                return oc.create_model(self._oc_name, **kwargs)
        except Exception as e:  # noqa: BLE001
            if self._oc_name.startswith("hf-hub:"):
                raise hub_failure("CLIP model config", self.model_ref, e, local_hint=self._local_hint()) from e
            raise ConfigError(f"cannot build open_clip model {self.model_ref!r}: {type(e).__name__}: {e}") from e

    def _get_skeleton(self) -> Any:
        if self._skeleton is None:
            self._skeleton = self._create("meta")
        return self._skeleton

    def _preprocess_cfg(self) -> dict[str, Any]:
        return dict(self._get_skeleton().visual.preprocess_cfg)

    def _get_transform(self) -> Any:
        if self._transform is None:
            from open_clip.transform import PreprocessCfg, image_transform_v2

            self._transform = image_transform_v2(PreprocessCfg(**self._preprocess_cfg()), is_train=False)
        return self._transform

    def _get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            try:
                self._tokenizer = _open_clip().get_tokenizer(self._oc_name)
            except Exception as e:  # noqa: BLE001
                raise hub_failure("CLIP tokenizer", self.model_ref, e, local_hint=self._local_hint()) from e
        return self._tokenizer

    def _context_length(self) -> int:
        if self._ctx is None:
            sk = self._get_skeleton()
            n = getattr(sk, "context_length", None) or getattr(getattr(sk, "text", None), "context_length", None)
            self._ctx = int(n or 77)
        return self._ctx

    def _pad_id(self) -> int:
        inner = getattr(self._get_tokenizer(), "tokenizer", None)
        pad = getattr(inner, "pad_token_id", None)
        return int(pad) if isinstance(pad, int) else 0

    def _resolve_shape(self) -> tuple[int | None, int]:
        if self._shape is None:
            sk = self._get_skeleton()
            size = self._preprocess_cfg()["size"]
            h, w = (size, size) if isinstance(size, int) else size
            with torch.no_grad():
                if self.pooling == "pooled":
                    if self.tower == "text":
                        d = sk.encode_text(torch.zeros(1, self._context_length(), dtype=torch.long, device="meta")).shape[-1]
                    else:
                        d = sk.encode_image(torch.empty(1, 3, h, w, device="meta")).shape[-1]
                    self._shape = (None, int(d))
                elif self.tower == "image":
                    try:
                        out = sk.forward_intermediates(image=torch.empty(1, 3, h, w, device="meta"), image_indices=1,
                                                       intermediates_only=True, image_output_fmt="NLC",
                                                       image_output_extra_tokens=True)
                    except Exception as e:  # noqa: BLE001 - e.g. a CNN image tower
                        raise ConfigError(f"pooling=tokens is not supported for the image tower of {self.model_ref} "
                                          f"({type(e).__name__}: {e}); use pooling=pooled") from e
                    n = sum(int(x[0].shape[1]) for k, x in out.items() if k.startswith("image_intermediates"))
                    d = int(out["image_intermediates"][0].shape[-1])
                    self._shape = (n if self._tokens_cap is None else min(n, self._tokens_cap), d)
                else:
                    ctx = self._context_length()
                    out = sk.forward_intermediates(text=torch.zeros(1, ctx, dtype=torch.long, device="meta"),
                                                   text_indices=1, intermediates_only=True)
                    d = int(out["text_intermediates"][0].shape[-1])
                    self._shape = (ctx if self._tokens_cap is None else min(ctx, self._tokens_cap), d)
        return self._shape

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self._resolve_shape()[1]

    @property
    def tokens(self) -> int | None:  # type: ignore[override]
        return self._resolve_shape()[0] if self.pooling == "tokens" else None

    def _weight_file(self) -> Path | None:
        if self.weights is not None:
            return self.weights
        if self.local_dir is not None:
            for name in CHECKPOINT_NAMES:
                if (self.local_dir / name).is_file():
                    return self.local_dir / name
            found = sorted(self.local_dir.glob("*.safetensors")) or sorted(self.local_dir.glob("*.bin")) or \
                sorted(self.local_dir.glob("*.pt*"))
            return found[0] if found else None
        return None

    def load(self, device: torch.device) -> None:
        oc = _open_clip()
        path = self._weight_file()
        if path is None and self.local_dir is not None:
            raise ConfigError(f"model folder {self.local_dir} holds no checkpoint; pass --weights FILE")
        if path is None:
            try:
                if self.tag is not None:
                    found = oc.download_pretrained(oc.get_pretrained_cfg(self._oc_name, self.tag))
                else:
                    from open_clip.pretrained import download_pretrained_from_hf

                    found = download_pretrained_from_hf(self._oc_name[len("hf-hub:"):])
                if not found:
                    raise FileNotFoundError("open_clip returned no checkpoint path")
            except Exception as e:  # noqa: BLE001
                what = f"{self.model_ref} (pretrained={self.tag})" if self.tag else self.model_ref
                raise hub_failure("CLIP weights", what, e, local_hint=self._local_hint()) from e
            path = Path(found)
        model = self._create("cpu")
        try:
            oc.load_checkpoint(model, str(path), strict=True, weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"weights {path} do not fit open_clip model {self.model_ref}: {type(e).__name__}: "
                              f"{str(e)[:500]}") from e
        self._loaded_file = path
        self._model = model.to(device).eval()
        self._get_transform()
        if self.tower != "image":
            self._get_tokenizer()
            self._context_length()
        self._resolve_shape()

    # -- the three steps -----------------------------------------------------------------------

    def _images(self, item: dict[str, Any]) -> torch.Tensor | Missing:
        return images_to_tensor(item, self._get_transform(), max_images=self.images.max_images,
                                max_pixels=self.images.max_pixels, max_image_pixels=self.images.max_image_pixels)

    def make_input(self, item: dict[str, Any]) -> Any:
        if self.tower == "image":
            return self._images(item)
        text = render_or_missing(self.template, item)
        if self.tower == "text":
            return text
        pixels = self._images(item)
        if isinstance(pixels, Missing) and isinstance(text, Missing):
            return Missing(f"{pixels.reason}; {text.reason}")
        return {"pixels": None if isinstance(pixels, Missing) else pixels,
                "text": None if isinstance(text, Missing) else text}

    def sort_key(self, item: dict[str, Any]) -> int:
        return 0 if self.tower == "image" else len(self.template.render(item))

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        return self._get_tokenizer()(texts, context_length=self._context_length())

    def collate(self, inputs: list[Any]) -> dict[str, torch.Tensor]:
        if self.tower == "image":
            return collate_images(inputs)
        if self.tower == "text":
            return {"text_ids": self._tokenize(list(inputs))}
        batch: dict[str, torch.Tensor] = {
            "has_image": torch.tensor([x["pixels"] is not None for x in inputs]),
            "has_text": torch.tensor([x["text"] is not None for x in inputs]),
        }
        with_img = [i for i, x in enumerate(inputs) if x["pixels"] is not None]
        if with_img:
            imgs = collate_images([inputs[i]["pixels"] for i in with_img])
            batch["pixels"] = imgs["pixels"]
            batch["owner"] = torch.tensor(with_img, dtype=torch.long)[imgs["owner"]]
        with_text = [i for i, x in enumerate(inputs) if x["text"] is not None]
        if with_text:
            batch["text_ids"] = self._tokenize([inputs[i]["text"] for i in with_text])
            batch["text_owner"] = torch.tensor(with_text, dtype=torch.long)
        return batch

    def _image_pooled(self, pixels: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
        return mean_by_owner(self._model.encode_image(pixels), owner, n)

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._model is None:
            raise RuntimeError("call load(device) before encode")
        m = self._model
        with torch.no_grad():
            if self.tower == "image" and self.pooling == "tokens":
                out = m.forward_intermediates(image=batch["pixels"], image_indices=1, intermediates_only=True,
                                              image_output_fmt="NLC", image_output_extra_tokens=True)
                seq = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)
                return mean_by_owner(seq[:, : self.tokens], batch["owner"], len(batch["n_images"]))
            if self.tower == "text" and self.pooling == "tokens":
                ids = batch["text_ids"]
                states = m.forward_intermediates(text=ids, text_indices=1, intermediates_only=True)["text_intermediates"][0]
                states = states * (ids != self._pad_id()).unsqueeze(-1).to(states.dtype)
                return states[:, : self.tokens].float()
            if self.tower == "image":
                x = self._image_pooled(batch["pixels"], batch["owner"], len(batch["n_images"]))
            elif self.tower == "text":
                x = m.encode_text(batch["text_ids"]).float()
            else:
                n = len(batch["has_image"])
                d = self.dim
                img = torch.zeros(n, d, device=batch["has_image"].device)
                txt = torch.zeros(n, d, device=batch["has_image"].device)
                if "pixels" in batch:
                    img = F.normalize(self._image_pooled(batch["pixels"], batch["owner"], n), dim=-1)
                if "text_ids" in batch:
                    txt[batch["text_owner"]] = F.normalize(m.encode_text(batch["text_ids"]).float(), dim=-1)
                count = batch["has_image"].float() + batch["has_text"].float()
                x = (img + txt) / count.clamp(min=1).unsqueeze(-1)
            if self.normalize:
                x = F.normalize(x, dim=-1)
            return x.float()

    # -- records -------------------------------------------------------------------------------

    def _weights_record(self) -> dict[str, Any]:
        path = self._weight_file() or self._loaded_file
        rec: dict[str, Any] = {"weights": [str(path)] if path else [], "weights_sha256": sha256_files([path]) if path else None,
                               "pretrained_tag": self.tag, "revision": None}
        if path is not None and self._weight_file() is None:
            parts = Path(path).parts
            if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
                rec["revision"] = parts[parts.index("snapshots") + 1]
        return rec

    def _preprocessing(self) -> dict[str, Any]:
        rec: dict[str, Any] = {}
        if self.tower != "text":
            pp = self._preprocess_cfg()
            rec["image"] = {"size": list(pp["size"]) if not isinstance(pp["size"], int) else [pp["size"], pp["size"]],
                            "mean": list(pp["mean"]), "std": list(pp["std"]), "interpolation": pp["interpolation"],
                            "resize_mode": pp["resize_mode"], **self.images.record()}
        if self.tower != "image":
            rec["text"] = {"template": self.template.template, "context_length": self._context_length()}
        return rec

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.key, "modality": self.modality, "model": self.model_ref, "tower": self.tower,
                "source": "local" if (self.weights or self.local_dir) else "hub", **self._weights_record(),
                "quick_gelu": self.quick_gelu, "pooling": self.pooling, "dim": self.dim, "tokens": self.tokens,
                "normalize": self.normalize if self.pooling == "pooled" else False, "dtype": "float32",
                "both": "mean of L2-normalised image and text embeddings" if self.tower == "both" else None,
                "preprocessing": self._preprocessing(),
                "libraries": library_versions("torch", "torchvision", "open_clip_torch", "timm", "pillow")}

    def config_key(self) -> dict[str, Any]:
        local = self._weight_file()
        return {"encoder": self.key, "model": self.model_ref, "tower": self.tower,
                "weights_sha256": sha256_files([local]) if local else None, "pretrained_tag": self.tag,
                "quick_gelu": self.quick_gelu, "pooling": self.pooling, "tokens": self.tokens,
                "normalize": self.normalize, "preprocessing": self._preprocessing()}
