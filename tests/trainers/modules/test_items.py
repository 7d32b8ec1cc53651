"""Item vectors from stored features (FeatureItemEncoder): missing vectors, refused token features."""

import pytest
import torch
from conftest import random_features

from mmrec.errors import ConfigError
from mmrec.features.aligned import FeatureTable
from mmrec.trainers.modules.items import FeatureItemEncoder


def _feats(n_items, dims, missing=()):
    return random_features(n_items, dims, {modality: missing for modality in dims})



def test_feature_items_use_the_missing_vector_never_zero():
    f = _feats(5, {"text": 6, "image": 4}, missing=[2])
    items = FeatureItemEncoder(f, ["text", "image"], 3, adaptor="linear", fusion="sum")
    items.eval()
    t = items.table()
    assert t.shape == (6, 3) and not t[0].any()
    lin_t = items.adaptors["text"][1]
    lin_i = items.adaptors["image"][1]
    # item 2 has neither feature: both modalities give their learned missing vectors, summed
    assert torch.allclose(t[2], items.missing["text"] + items.missing["image"], atol=1e-6)
    expect3 = lin_t(f["text"].table[3]) + lin_i(f["image"].table[3])
    assert torch.allclose(t[3], expect3, atol=1e-6)
    ids = torch.tensor([[3, 0, 2]])
    assert torch.allclose(items.lookup(ids)[0], t[[3, 0, 2]], atol=1e-6)



def test_feature_items_refuse_token_features():
    f = {"text": FeatureTable("text", torch.zeros(4, 3, 5), torch.ones(4, dtype=torch.bool), {})}
    with pytest.raises(ConfigError, match="token sequences"):
        FeatureItemEncoder(f, ["text"], 8)
