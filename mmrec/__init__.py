"""mmrec: multi-modal sequential recommendation on frozen features.

From Python: ``mmrec.prepare``, ``mmrec.extract``, ``mmrec.train`` (returns a ``Run`` with
``results``, ``recommend`` and ``evaluate``), ``mmrec.report`` (``mmrec/api.py``). Importing
``mmrec`` loads none of them (nor torch) until one is used.
"""

__version__ = "0.1.0"

_API = ("prepare", "extract", "train", "report", "Run")


def __getattr__(name: str):
    if name in _API:
        from mmrec import api

        return getattr(api, name)
    raise AttributeError(f"module 'mmrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
