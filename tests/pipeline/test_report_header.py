"""The report header's thread row: base.threads, and beside it the experiments whose stages use their own count."""

from __future__ import annotations

from equitune.pipeline.context import stage_threads
from equitune.pipeline.report import environment_table
from equitune.pipeline.schema import BaseParams, SectionParams

RECORD = {"cpu": {"vendor": "v", "model": "m", "family": 6, "vector_flags": "avx2"},
          "kernels": {"cpu_isa": "avx2", "cpu_isa_source": "params", "aten_cpu_capability": "avx2",
                      "onednn_isa": "avx2", "env_ONEDNN_MAX_CPU_ISA": "AVX2", "mkl_cbwr": "AVX2"},
          "versions": {"mkl": "1", "onednn": "2", "numpy": "3"}}


def _threads_row(section_threads=None) -> str:
    table = environment_table("smoke", BaseParams(threads=2), RECORD, section_threads)
    return next(line for line in table.splitlines() if line.startswith("| threads |"))


def test_header_shows_a_section_thread_count_that_differs():
    assert _threads_row({"scan": 1}) == "| threads | 2 (scan stages: 1) |"


def test_header_shows_base_threads_alone_when_nothing_differs():
    assert _threads_row() == "| threads | 2 |"
    assert _threads_row({"scan": 2}) == "| threads | 2 |"


class _WithThreads:
    threads = 1


def test_stage_threads_prefers_the_section_own_count():
    base = BaseParams(threads=3)
    assert stage_threads(SectionParams("smoke", base, _WithThreads())) == 1
    assert stage_threads(SectionParams("smoke", base, object())) == 3
    assert stage_threads(SectionParams("smoke", base, None)) == 3
