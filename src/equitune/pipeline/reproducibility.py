"""Reproducible CPU kernels: pin the instruction set torch's kernels use, before the first torch operation, and
record what was used.

Training is chaotic: a different CPU kernel path changes float rounding in the last bit, and after a few hundred
steps the models differ (the same commit gave SCAN validation 0.8848 on an AVX-512 machine and 0.8780 on an AVX2
one). Three libraries choose their kernels by the CPU's vector unit, each with its own knob:

- ATen, torch's own vectorised kernels (elementwise, reductions, softmax, RNN cells, attention):
  ``ATEN_CPU_CAPABILITY`` (``default`` = no SIMD, ``avx2``, ``avx512``), read at the first dispatched operation;
- oneDNN (convolutions, the LSTM/GRU layers): ``ONEDNN_MAX_CPU_ISA`` (a cap: ``SSE41``, ``AVX2``, ``AVX512_CORE``),
  read at its first primitive;
- MKL (matrix products): ``MKL_CBWR``, conditional numerical reproducibility, read at its first call. On Intel CPUs
  a branch (``AVX2``) pins MKL's kernels; MKL on AMD CPUs ignores the ISA branches (it runs its own Zen kernels,
  ``mkl_blas_def_sgemm_kernel_0_zen``, whatever the vector unit) and honours only ``COMPATIBLE`` (SSE2, slow).

``base.cpu_isa`` (params.yaml) picks one setting for all three; ``$EQUITUNE_CPU_ISA`` overrides it for a whole run
(the test suite runs ``native``; ``scripts/check_reproduce.py --cpu-isa`` forces one for a check):

- ``avx2``: ATen and oneDNN at AVX2; MKL at its AVX2 branch on Intel, untouched on AMD. Measured on an AMD EPYC
  with AVX-512 (Zen 5): it reproduces the digits of an AMD EPYC AVX2 machine exactly (SCAN and image training).
- ``avx512``: the same at AVX-512 (for a fleet of AVX-512 machines).
- ``baseline``: no SIMD in ATen, SSE4.1 in oneDNN, MKL ``COMPATIBLE``: the lowest common denominator of x86-64.
- ``native``: nothing pinned; every library takes the best kernels of this CPU (the digits then belong to it).

:func:`apply_cpu_isa` is called by :func:`equitune.pipeline.stage.run_stage` before a stage's ``main``;
:func:`environment_record` is what the report stage commits as ``metrics/environment.json`` (the reproduce check
compares exact digits only when it matches) and :func:`mlflow_tags` what every MLflow run is tagged with.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Literal, get_args

from ..core.errors import ConfigError

__all__ = ["CPU_ISA_SETTINGS", "CpuIsa", "OVERRIDE_VARIABLE", "AppliedSettings", "apply_cpu_isa", "cpu_info",
           "environment_record", "mlflow_tags", "onednn_isa"]

CpuIsa = Literal["avx2", "avx512", "baseline", "native"]
CPU_ISA_SETTINGS: tuple[str, ...] = get_args(CpuIsa)

OVERRIDE_VARIABLE = "EQUITUNE_CPU_ISA"
"""Environment variable that overrides ``base.cpu_isa`` for every stage of a run."""

KNOBS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")

# ATen's capability names as torch.backends.cpu.get_cpu_capability() reports them, lowest first (x86).
_ATEN_ORDER = ("DEFAULT", "AVX2", "AVX512")

# oneDNN's x86 ISA ladder (the values ONEDNN_MAX_CPU_ISA takes), lowest first, with every CPU flag each rung needs.
_SSE41 = ("sse4_1",)
_AVX2 = (*_SSE41, "avx", "avx2", "fma")
_AVX512 = (*_AVX2, "avx512f", "avx512bw", "avx512vl", "avx512dq")
_ONEDNN_LADDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SSE41", _SSE41),
    ("AVX", (*_SSE41, "avx")),
    ("AVX2", _AVX2),
    ("AVX2_VNNI", (*_AVX2, "avx_vnni")),
    ("AVX512_CORE", _AVX512),
    ("AVX512_CORE_VNNI", (*_AVX512, "avx512_vnni")),
    ("AVX512_CORE_BF16", (*_AVX512, "avx512_vnni", "avx512_bf16")),
    ("AVX10_1_512", (*_AVX512, "avx512_vnni", "avx512_bf16", "avx512_fp16")),
    ("AVX10_1_512_AMX", (*_AVX512, "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")),
)

_VECTOR_FLAGS = ("sse4_1", "avx", "fma", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                 "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")


@dataclass(frozen=True)
class AppliedSettings:
    """What :func:`apply_cpu_isa` did: the setting, where it came from, and the knobs as they now stand."""

    cpu_isa: str
    source: str  # "params" or the override variable's name
    knobs: Mapping[str, str]  # ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_CBWR ("" = not set)
    aten_cpu_capability: str  # what ATen actually uses in this process


_applied: AppliedSettings | None = None


# ----- the CPU ----------------------------------------------------------------------------------------------------

def cpu_info() -> dict[str, str]:
    """Vendor, model name, family and the vector-unit flags of this CPU (from /proc/cpuinfo on Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {
        "vendor": fields.get("vendor_id", platform.processor() or "unknown"),
        "model": fields.get("model name", "unknown"),
        "family": fields.get("cpu family", "unknown"),
        "vector_flags": " ".join(f for f in _VECTOR_FLAGS if f in flags),
    }


def onednn_isa(cap: str | None, flags: str) -> str:
    """The oneDNN instruction set in effect: the highest rung of its ladder that this CPU supports, no higher than
    the cap ``ONEDNN_MAX_CPU_ISA`` (derived from the CPU flags: torch offers no query of oneDNN's choice)."""
    have = set(flags.split())
    names = [name for name, _ in _ONEDNN_LADDER]
    limit = names.index(cap.upper()) if cap and cap.upper() in names else len(names) - 1
    supported = [name for name, needs in _ONEDNN_LADDER[: limit + 1] if set(needs) <= have]
    return supported[-1] if supported else "none"


# ----- applying a setting -------------------------------------------------------------------------------------------

def _knobs_for(cpu_isa: str, vendor: str) -> dict[str, str | None]:
    """The three variables for a setting (None: leave as it is). MKL's ISA branches pin only Intel CPUs: on AMD
    they fall back to MKL's AUTO branch in CNR mode, which changed results there, so they are not set on AMD."""
    intel = vendor == "GenuineIntel"
    if cpu_isa == "avx2":
        return {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2" if intel else None}
    if cpu_isa == "avx512":
        return {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
                "MKL_CBWR": "AVX512" if intel else None}
    if cpu_isa == "baseline":
        return {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}
    return {name: None for name in KNOBS}


def resolve_cpu_isa(params_value: str) -> tuple[str, str]:
    """(setting, source): ``$EQUITUNE_CPU_ISA`` when set, else the params value."""
    override = os.environ.get(OVERRIDE_VARIABLE, "").strip()
    if not override:
        return params_value, "params"
    if override not in CPU_ISA_SETTINGS:
        raise ConfigError(f"{OVERRIDE_VARIABLE}={override!r} is not a CPU setting; allowed: "
                          f"{', '.join(CPU_ISA_SETTINGS)} (or unset it to use base.cpu_isa from params)")
    return override, OVERRIDE_VARIABLE


def apply_cpu_isa(params_value: str) -> AppliedSettings:
    """Set the kernel knobs for ``params_value`` (or its override), then fix ATen's choice and check it.

    Must run before the first torch operation of the process: ATen reads its variable once, at the first dispatched
    operation (importing torch is fine). If an operation ran earlier with better kernels than asked for, the
    results would silently use them: that is a :class:`ConfigError`. A CPU that lacks the asked-for instruction set
    gets its best lower one (torch's own fallback), which the record then shows.
    """
    global _applied
    import torch

    cpu_isa, source = resolve_cpu_isa(params_value)
    for name, value in _knobs_for(cpu_isa, cpu_info()["vendor"]).items():
        if value is not None:
            os.environ[name] = value
    capability = torch.backends.cpu.get_cpu_capability()  # fixes ATen's choice now, with the variable set
    asked = os.environ.get("ATEN_CPU_CAPABILITY", "").upper()
    if asked in _ATEN_ORDER and capability in _ATEN_ORDER and _ATEN_ORDER.index(capability) > _ATEN_ORDER.index(asked):
        raise ConfigError(
            f"cpu_isa {cpu_isa!r} asks torch for {asked} kernels, but this process already uses {capability}: a torch "
            "operation ran before the setting was applied (at import time?). Move it into the stage's main.")
    _applied = AppliedSettings(cpu_isa, source, {name: os.environ.get(name, "") for name in KNOBS}, capability)
    return _applied


def applied_settings() -> AppliedSettings:
    """What this process runs with: the applied setting, else (nothing applied, e.g. a library user) the state."""
    if _applied is not None:
        return _applied
    import torch
    return AppliedSettings("not applied", "none", {name: os.environ.get(name, "") for name in KNOBS},
                           torch.backends.cpu.get_cpu_capability())


# ----- recording ----------------------------------------------------------------------------------------------------

def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _library_versions() -> dict[str, str]:
    import torch
    config = torch.__config__.show()

    def after(marker: str) -> str:
        """The version that follows ``marker`` in torch's build description ("2024.2", "v3.12.0")."""
        line = next((line for line in config.splitlines() if marker in line), "")
        words = line.split(marker, 1)[1].split() if line else []
        return words[0].split("-")[0] if words else "none"

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "transformers": _version("transformers"),
        "mkl": after("Math Kernel Library Version"),
        "onednn": after("MKL-DNN"),
    }


def environment_record(threads: int, deterministic: bool) -> dict:
    """Everything that decides the digits of a CPU run, as committed in ``metrics/environment.json``:
    the CPU, the kernels in effect (setting, knobs, ATen's actual capability, oneDNN's derived ISA), the thread
    count of ``base`` and the numerical libraries' versions."""
    applied = applied_settings()
    cpu = cpu_info()
    return {
        "cpu": cpu,
        "kernels": {
            "cpu_isa": applied.cpu_isa,
            "cpu_isa_source": applied.source,
            "aten_cpu_capability": applied.aten_cpu_capability,
            "onednn_isa": onednn_isa(applied.knobs.get("ONEDNN_MAX_CPU_ISA"), cpu["vector_flags"]),
            "mkl_cbwr": applied.knobs.get("MKL_CBWR") or "unset",
            **{f"env_{name}": value or "unset" for name, value in applied.knobs.items()},
        },
        "threads": threads,
        "deterministic": deterministic,
        "platform": f"{platform.system()} {platform.machine()}",
        "versions": _library_versions(),
    }


def mlflow_tags() -> dict[str, str]:
    """The kernels and CPU this process runs with, as MLflow tags (``cpu.*``)."""
    applied = applied_settings()
    cpu = cpu_info()
    return {
        "cpu.isa": applied.cpu_isa,
        "cpu.isa_source": applied.source,
        "cpu.capability": applied.aten_cpu_capability,
        "cpu.onednn_isa": onednn_isa(applied.knobs.get("ONEDNN_MAX_CPU_ISA"), cpu["vector_flags"]),
        "cpu.mkl_cbwr": applied.knobs.get("MKL_CBWR") or "unset",
        "cpu.vendor": cpu["vendor"],
        "cpu.model": cpu["model"],
    }
