"""Pinning torch's CPU kernels (equitune.pipeline.reproducibility): each pin in a fresh process (ATen reads its
setting once per process), the refusal of a pin that comes too late, the override, the record and the tags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from equitune.core.errors import ConfigError
from equitune.pipeline import reproducibility as repro
from helpers.paths import ROOT, dvc_commands

NATIVE = torch.backends.cpu.get_cpu_capability()  # the suite runs with EQUITUNE_CPU_ISA=native (conftest)
x86 = pytest.mark.skipif(NATIVE not in ("AVX2", "AVX512"), reason=f"an x86 CPU with AVX2 (this one: {NATIVE})")


def fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter without the suite's EQUITUNE_CPU_ISA=native and without inherited knobs."""
    environ = {k: v for k, v in os.environ.items() if k not in (repro.OVERRIDE_VARIABLE, *repro.KNOBS)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          env={**environ, **env})


@x86
def test_baseline_pins_every_library_before_the_first_operation():
    result = fresh("""
        import os, torch
        from equitune.pipeline.reproducibility import apply_cpu_isa
        applied = apply_cpu_isa("baseline")
        torch.ones(3).exp()
        print(applied.aten_cpu_capability, torch.backends.cpu.get_cpu_capability(),
              *(os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")))
    """)
    assert result.stdout.split() == ["DEFAULT", "DEFAULT", "default", "SSE41", "COMPATIBLE"], result.stderr


@x86
def test_a_pin_after_the_first_operation_is_refused():
    result = fresh("""
        import torch
        from equitune.pipeline.reproducibility import apply_cpu_isa
        torch.ones(3).exp()  # ATen chose its kernels here
        apply_cpu_isa("baseline")
    """)
    assert result.returncode != 0
    assert "ConfigError" in result.stderr and f"already uses {NATIVE}" in result.stderr


@pytest.mark.slow
@x86
def test_avx2_pins_aten_and_onednn_and_the_override_wins():
    result = fresh("""
        import os
        from equitune.pipeline.reproducibility import apply_cpu_isa
        applied = apply_cpu_isa("native")
        print(applied.cpu_isa, applied.source, applied.aten_cpu_capability, os.environ["ONEDNN_MAX_CPU_ISA"])
    """, EQUITUNE_CPU_ISA="avx2")
    assert result.stdout.split() == ["avx2", "EQUITUNE_CPU_ISA", "AVX2", "AVX2"], result.stderr


@pytest.mark.slow
def test_native_sets_nothing():
    result = fresh("""
        import os
        from equitune.pipeline.reproducibility import apply_cpu_isa
        applied = apply_cpu_isa("native")
        print(applied.aten_cpu_capability, [k for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
                                            if k in os.environ])
    """)
    assert result.stdout.split() == [NATIVE, "[]"], result.stderr


def test_an_unknown_override_names_the_allowed_settings(monkeypatch):
    monkeypatch.setenv(repro.OVERRIDE_VARIABLE, "avx1024")
    with pytest.raises(ConfigError, match="EQUITUNE_CPU_ISA='avx1024' is not a CPU setting; allowed: avx2, avx512"):
        repro.resolve_cpu_isa("avx2")


def test_mkl_branches_are_set_on_intel_only():
    """MKL on AMD ignores its ISA branches (AUTO in CNR mode, which changed results there): only COMPATIBLE."""
    assert repro._knobs_for("avx2", "GenuineIntel")["MKL_CBWR"] == "AVX2"
    assert repro._knobs_for("avx2", "AuthenticAMD")["MKL_CBWR"] is None
    assert repro._knobs_for("baseline", "AuthenticAMD")["MKL_CBWR"] == "COMPATIBLE"
    assert set(repro._knobs_for("native", "AuthenticAMD").values()) == {None}


@pytest.mark.parametrize("cap, flags, expected", [
    (None, "sse4_1 avx fma avx2 avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16", "AVX512_CORE_BF16"),
    ("AVX2", "sse4_1 avx fma avx2 avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16", "AVX2"),
    (None, "sse4_1 avx fma avx2", "AVX2"),
    ("AVX512_CORE", "sse4_1 avx fma avx2", "AVX2"),  # a cap above the CPU: the CPU's best
    (None, "sse4_1 avx fma avx2 avx512f avx512bw avx512vl avx512dq", "AVX512_CORE"),  # no avx_vnni: not a gap
    ("SSE41", "sse4_1 avx fma avx2", "SSE41"),
    (None, "", "none"),
])
def test_onednn_isa_is_the_cpus_best_rung_under_the_cap(cap, flags, expected):
    assert repro.onednn_isa(cap, flags) == expected


def test_the_record_names_the_kernels_cpu_and_versions():
    record = repro.environment_record(threads=2, deterministic=True)
    assert set(record) == {"cpu", "kernels", "threads", "deterministic", "platform", "versions"}
    assert {"aten_cpu_capability", "onednn_isa", "mkl_cbwr", "cpu_isa"} <= set(record["kernels"])
    assert record["kernels"]["aten_cpu_capability"] == NATIVE
    assert {"torch", "numpy", "mkl", "onednn", "python"} <= set(record["versions"])
    assert "unknown" not in (record["versions"]["mkl"], record["versions"]["onednn"])
    json.dumps(record)  # a metrics file
    assert set(repro.mlflow_tags()) >= {"cpu.isa", "cpu.capability", "cpu.onednn_isa", "cpu.mkl_cbwr", "cpu.vendor"}


@pytest.mark.slow
@x86
def test_the_report_stage_applies_params_and_commits_the_record(tmp_path):
    """A stage run as DVC runs it: run_stage pins base.cpu_isa from the params file before main; the report stage
    writes the record (with the capability actually used) and the environment table."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["base"]["cpu_isa"] = "baseline"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    section = tmp_path / "images.md"
    section.write_text("## images\n")
    words = dvc_commands()["report"]
    script = ROOT / words[1]
    environ = {k: v for k, v in os.environ.items() if k not in (repro.OVERRIDE_VARIABLE, *repro.KNOBS)}
    metrics = ROOT / "metrics"  # the committed cells' metrics: the headline numbers come from them
    result = subprocess.run([sys.executable, str(script), "--params", "params.yaml", "--sections", str(section),
                             "--out", "report.md", "--environment", "environment.json",
                             "--scan-metrics", str(metrics / "scan"), "--images-metrics", str(metrics / "images"),
                             "--nlg-scores", str(metrics / "nlg" / "scores.json"),
                             "--nlg-perplexity", str(metrics / "nlg" / "perplexity.json"), "--headline", "headline"],
                            cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    kernels = json.loads((tmp_path / "environment.json").read_text())["kernels"]
    assert (kernels["cpu_isa"], kernels["cpu_isa_source"], kernels["aten_cpu_capability"]) == \
        ("baseline", "params", "DEFAULT")
    assert kernels["onednn_isa"] == "SSE41" and kernels["mkl_cbwr"] == "COMPATIBLE"
    assert sorted(p.name for p in (tmp_path / "headline").iterdir()) == ["images", "nlg", "scan"]
    report = (tmp_path / "report.md").read_text()
    assert "| torch CPU capability in use (ATen) | DEFAULT |" in report and "| CPU kernels (base.cpu_isa) | baseline |" in report


@pytest.mark.slow
@x86
def test_no_stage_script_runs_a_torch_operation_at_import():
    """run_stage pins the kernels after the script's imports: an import that runs a torch operation would fix
    ATen's choice first (and run_stage would then refuse to run). Imports every stage script of dvc.yaml."""
    scripts = sorted({words[1] for words in dvc_commands().values()})
    result = fresh(f"""
        import os, runpy, sys
        sys.path.insert(0, {str(ROOT / 'src')!r})
        for script in {scripts!r}:
            runpy.run_path(os.path.join({str(ROOT)!r}, script), run_name="imported")
        os.environ["ATEN_CPU_CAPABILITY"] = "default"
        import torch
        print(torch.backends.cpu.get_cpu_capability())
    """)
    assert result.stdout.split() == ["DEFAULT"], result.stderr[-3000:]
