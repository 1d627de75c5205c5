"""The equitune library: finite groups as values, equivariance wrappers around any ``nn.Module``, the checker.

It imports only torch and the standard library; the pipeline and the experiments build on it, never the reverse.

- :mod:`.groups`: groups and their actions on images, token ids and vocabulary scores;
- :mod:`.wrappers`: :class:`EquiTune`, :class:`LambdaEquiTune`, :class:`EquiZero` (the |G| copies as one batch);
- :mod:`.frames`: :class:`FrameAverage` and :class:`Canonicalize` (only an input-dependent frame's copies);
- :mod:`.proxies`: equizero's proxy losses, for class logits and for sequences;
- :mod:`.checks`: the equivariance error and the assertion every test uses;
- :mod:`.errors`: the exceptions every layer raises.
"""

from .checks import assert_equivariant, assert_not_equivariant, equivariance_error, equivariance_errors
from .errors import ConfigError, DataError, EquituneError, GroupSpecError
from .frames import Canonicalize, FrameAverage, OrbitScores, support_frame
from .groups import FiniteGroup, WordCycles, image_action, parse_group_spec
from .proxies import PROXIES
from .wrappers import EquiTune, EquiZero, LambdaEquiTune

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
