"""equitune: group equivariant fine-tuning (equi-tuning, lambda-equitune, equizero) of pretrained models.

A regular package on purpose (not a namespace package): with PYTHONPATH=<clone>/src, as
scripts/check_reproduce.py runs a fresh clone, the clone's package then wins outright over an editable
install, instead of being merged with it module by module.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("equitune")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed (PYTHONPATH=src)
    __version__ = "0+unknown"
