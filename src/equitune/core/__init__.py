"""The equitune library: finite groups as values, equivariance wrappers around any ``nn.Module``, the checker.

It imports only torch and the standard library; the pipeline and the experiments build on it, never the reverse.

- :mod:`.groups`: groups and their actions on images, token ids and vocabulary scores;
- :mod:`.wrappers`: :class:`EquiTune`, :class:`LambdaEquiTune`, :class:`EquiZero` (the |G| copies as one batch);
- :mod:`.frames`: :class:`FrameAverage` and :class:`Canonicalize` (only an input-dependent frame's copies);
- :mod:`.proxies`: equizero's proxy losses, for class logits and for sequences;
- :mod:`.checks`: the equivariance error and the assertion every test uses;
- :mod:`.errors`: the exceptions every layer raises.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Names load on first use (PEP 562), so that a module which needs only the exceptions (params validation, the
# report stages, `make ui`) does not pay torch's import, about 1.5 s per process.
_SUBMODULE = {
    "assert_equivariant": "checks", "assert_not_equivariant": "checks", "equivariance_error": "checks",
    "equivariance_errors": "checks",
    "ConfigError": "errors", "DataError": "errors", "EquituneError": "errors", "GroupSpecError": "errors",
    "Canonicalize": "frames", "FrameAverage": "frames", "OrbitScores": "frames", "support_frame": "frames",
    "FiniteGroup": "groups", "WordCycles": "groups", "image_action": "groups", "parse_group_spec": "groups",
    "PROXIES": "proxies",
    "EquiTune": "wrappers", "EquiZero": "wrappers", "LambdaEquiTune": "wrappers",
}

if TYPE_CHECKING:
    from .checks import assert_equivariant, assert_not_equivariant, equivariance_error, equivariance_errors
    from .errors import ConfigError, DataError, EquituneError, GroupSpecError
    from .frames import Canonicalize, FrameAverage, OrbitScores, support_frame
    from .groups import FiniteGroup, WordCycles, image_action, parse_group_spec
    from .proxies import PROXIES
    from .wrappers import EquiTune, EquiZero, LambdaEquiTune


def __getattr__(name: str):
    if name not in _SUBMODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_SUBMODULE[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "PROXIES",
    "Canonicalize",
    "ConfigError",
    "DataError",
    "EquiTune",
    "EquiZero",
    "EquituneError",
    "FiniteGroup",
    "FrameAverage",
    "GroupSpecError",
    "LambdaEquiTune",
    "OrbitScores",
    "WordCycles",
    "assert_equivariant",
    "assert_not_equivariant",
    "equivariance_error",
    "equivariance_errors",
    "image_action",
    "parse_group_spec",
    "support_frame",
]
