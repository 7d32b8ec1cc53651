"""The method registry: one file per method, registered here by name."""

from __future__ import annotations

from mmrec.errors import ConfigError
from mmrec.trainers.base import SequentialRecommender
from mmrec.trainers.methods.ant import ANT
from mmrec.trainers.methods.fdsa import FDSA
from mmrec.trainers.methods.gru4rec import GRU4Rec
from mmrec.trainers.methods.kdsr import KDSR
from mmrec.trainers.methods.mmsr import MMSR
from mmrec.trainers.methods.odmt import ODMT
from mmrec.trainers.methods.pop import Pop
from mmrec.trainers.methods.sasrec import SASRec
from mmrec.trainers.methods.sasrec_ef import SASRecEF
from mmrec.trainers.methods.sasrec_lf import SASRecLF
from mmrec.trainers.methods.syncrec import SyNCRec
from mmrec.trainers.methods.unisrec import UniSRec

METHODS: dict[str, type[SequentialRecommender]] = {
    cls.name: cls for cls in (Pop, SASRec, GRU4Rec, SASRecEF, SASRecLF, FDSA, UniSRec, MMSR, ODMT, KDSR, ANT, SyNCRec)
}


def get_method(name: str) -> type[SequentialRecommender]:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}") from None
