"""seqrec: transformer sequential recommenders with pluggable memory-efficient losses."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["SeqRec", "__version__"]


def __getattr__(name: str):  # lazy: `import seqrec` and `seqrec --help` stay fast (no torch import)
    if name == "SeqRec":
        from seqrec.api import SeqRec

        return SeqRec
    raise AttributeError(name)
