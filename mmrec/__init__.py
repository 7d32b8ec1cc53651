"""mmrec: multi-modal sequential recommendation on frozen features."""

__version__ = "0.1.0"
