"""Features into training: the --features option, modality checks, alignment to a dataset by item id."""

import numpy as np
import pytest

from mmrec.data.prepared import PreparedDataset
from mmrec.errors import ConfigError, DataError
from mmrec.features.aligned import (
    check_modalities,
    load_features,
    parse_features_option,
)
from mmrec.pipeline.extract import ExtractConfig, extract


def test_features_option_and_modality_errors(small, tmp_path):
    assert parse_features_option("text=minilm, image=/x/effnet") == {"text": "minilm", "image": "/x/effnet"}
    with pytest.raises(ConfigError, match="modality=entry pairs"):
        parse_features_option("minilm")
    with pytest.raises(ConfigError, match="method sasrec uses no item features"):
        check_modalities("sasrec", {"text": "x"}, (), (), tmp_path)
    with pytest.raises(ConfigError, match=r"needs features for image: give them with --features text=ENTRY,image=ENTRY "
                                          r"\(store .*: none in"):
        check_modalities("mmsr", {"text": "x"}, ("text", "image"), ("text", "image"), tmp_path / "nostore")



def test_load_features_aligns_and_marks_absent_items(small, tmp_path):
    store = tmp_path / "store"
    extract(ExtractConfig(encoder="price", dataset=str(small), store=str(store), num_workers=0, device="cpu",
                          dtype="float32"), log=lambda m: None)
    d = PreparedDataset(small)
    feats = load_features({"price": "price"}, d, store)
    f = feats["price"]
    assert f.table.shape == (d.n_items + 1, 64) and f.present.tolist() == [False, True, True, False, True, True]
    assert not f.table[0].any() and not f.table[3].any()  # padding and the item with no price are zeros
    assert f.source["items_without"] == 1 and f.source["encoder"] == "price"
    # item "1" (price 1.0) has the sinusoidal code of log1p(1.0) * 100: sin at 0, cos at 1 of frequency 1
    assert f.table[1, 0].item() == pytest.approx(np.sin(np.log1p(1.0) * 100), abs=1e-5)
    assert f.table[1, 1].item() == pytest.approx(np.cos(np.log1p(1.0) * 100), abs=1e-5)
    with pytest.raises(ConfigError, match="holds price features, not text"):
        load_features({"text": "price"}, d, store)
    with pytest.raises(DataError, match="entries under .*: price"):
        load_features({"price": "nope"}, d, store)
