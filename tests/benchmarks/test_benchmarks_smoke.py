"""The benchmark scripts: their building blocks exactly (fast), and each script end to end at --quick size (slow).

No timing is asserted anywhere: speed targets are what the benchmarks report, not what tests enforce.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_models as models  # noqa: E402
import sequence_batching as sb  # noqa: E402
import timing  # noqa: E402

import pipeline  # noqa: E402
from equitune.scan.data import input_vocabulary, output_vocabulary  # noqa: E402
from equitune.scan.model import Seq2Seq  # noqa: E402


def rotate(x: torch.Tensor, k: int = 1) -> torch.Tensor:
    return torch.rot90(x, k, dims=(-2, -1))


# ------------------------------------------------------------------------------------ one number per benchmark
def test_each_benchmark_has_one_number_in_the_report_its_script_and_the_readme():
    import summarize
    numbers = {name: int(title.split(".", 1)[0]) for name, (title, _, _) in summarize.BENCHMARKS.items()}
    assert sorted(numbers.values()) == list(range(1, len(numbers) + 1))
    numbered_scripts = {path.stem for path in BENCH.glob("*.py") if path.read_text().startswith('"""Benchmark')}
    assert numbered_scripts == set(numbers)
    readme = (BENCH / "README.md").read_text()
    for name, number in numbers.items():
        assert (BENCH / f"{name}.py").read_text().startswith(f'"""Benchmark {number}: '), name
        assert f"| {number} | `{name}.py` |" in readme, name


# ------------------------------------------------------------------------------------ models (exact checks)
def test_parameter_counts_match_the_papers_comparison():
    assert models.parameter_count(models.SmallCNN()) == 13578  # paper: about 13.6k
    assert models.parameter_count(models.C4GroupCNN()) == 13194  # paper: about 13.0k


def test_group_cnn_features_are_c4_equivariant_and_logits_invariant():
    torch.manual_seed(0)
    model = models.C4GroupCNN().double()
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    features = model.features(x)
    for k in range(1, 4):
        # Rotating the input by k quarter turns rotates every map and shifts the group axis by k.
        expected = torch.roll(rotate(features, k), k, dims=2)
        assert torch.allclose(model.features(rotate(x, k)), expected, atol=1e-12, rtol=0)
        assert torch.allclose(model(rotate(x, k)), model(x), atol=1e-12, rtol=0)
    # The check can fail: the wrong shift direction is far off, so the test is not vacuous.
    assert (model.features(rotate(x)) - torch.roll(rotate(features), -1, dims=2)).abs().max() > 1e-3


# ------------------------------------------------------------------ sequence decoding: batched == looped
@pytest.mark.parametrize("order", [2, 4])
def test_scan_looped_reference_matches_the_projects_batched_decoder(order):
    torch.manual_seed(0)
    model = Seq2Seq("gru", len(input_vocabulary()), len(output_vocabulary()), hidden_size=16).double().eval()
    decoders = sb.ScanDecoders(model, sb.SCAN_GROUPS[order], max_length=8)
    chunks = sb.scan_test_chunks(batch=4, limit=8)
    assert sum(len(c) for c in chunks) == 8
    for src in chunks:
        batched = decoders.batched(src)
        assert torch.equal(batched, decoders.looped(src))
        # ... and both are the equivariant decoder: decoding g . command gives g . (decoding of the command).
        for g in decoders.group:
            moved = decoders.looped(decoders.input_perm.on_ids.apply(src, g))
            assert torch.equal(moved, decoders.output_perm.on_ids.apply(batched, g))


@pytest.mark.parametrize("order", [2, 4])
def test_equilm_looped_reference_matches_the_projects_generate(order):
    lm = sb.tiny_causal_lm(vocab_size=64, hidden=32, layers=1).double()
    generators = sb.LMGenerators(lm, sb.TINY_LM_IDS[order], new_tokens=5)
    prompts = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(0))
    prompts[:, 1] = 10
    uniform = generators.uniforms(3, seed=0)
    batched = generators.batched(prompts, uniform)
    assert batched.shape == (3, 5)
    assert torch.equal(batched, generators.looped(prompts, uniform))
    # A different seed changes the samples, so agreement above is not trivially constant output.
    assert not torch.equal(batched, generators.batched(prompts, generators.uniforms(3, seed=1)))


# --------------------------------------------------------------------------------- timing and results files
def test_compare_alternates_warms_up_and_takes_medians():
    calls = []
    result = timing.compare(lambda: calls.append("a"), lambda: calls.append("b"), repeats=4, warmup=1)
    assert calls[:2] == ["a", "b"]  # warm-up
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # alternating who goes first
    assert len(result.a_all) == len(result.b_all) == 4
    assert result.ratio == result.a_seconds / result.b_seconds
    with pytest.raises(ValueError, match="repeats"):
        timing.compare(lambda: None, lambda: None, repeats=0)


def test_record_replaces_own_rows_and_keeps_others(tmp_path):
    path = tmp_path / "bench.json"
    args = timing.base_parser("x").parse_args(["--results", str(path), "--note", "test"])
    timing.record("bench", args, [{"row_id": "a", "v": 1}, {"row_id": "b", "v": 2}])
    timing.record("bench", args, [{"row_id": "b", "v": 3}])
    rows = {r["row_id"]: r for r in json.loads(path.read_text())["rows"]}
    assert rows["a"]["v"] == 1 and rows["b"]["v"] == 3
    assert rows["b"]["machine"]["torch"] == torch.__version__ and rows["b"]["note"] == "test"
    assert "command" in rows["b"] and "cpu_model" in rows["b"]["machine"]
    # --quick without --results never touches the real results files.
    assert timing.results_path("bench", timing.base_parser("x").parse_args(["--quick"])) is None


def test_pipeline_parses_dvc_output_into_stage_times():
    events = [
        (0.0, "Running stage 'prepare':\n"), (0.1, "> python prepare.py\n"), (2.0, "Generating lock file 'dvc.lock'\n"),
        (2.1, "Updating lock file 'dvc.lock'\n"), (2.2, "\n"), (2.5, "Stage 'cached' didn't change, skipping\n"),
        (3.0, "Running stage 'train@1':\n"), (9.5, "Updating lock file 'dvc.lock'\n"),
        (10.0, "Running stage 'report':\n"), (11.0, "some output\n"),
    ]
    stages = pipeline.parse_stage_times(events, end=12.0)
    assert [(s["stage"], s["status"], s["seconds"]) for s in stages] == [
        ("prepare", "ran", 2.0), ("cached", "unchanged", 0.0), ("train@1", "ran", 6.5), ("report", "ran", 2.0)]


# ------------------------------------------------------------------------------- each script, end to end
def run_script(name: str, *extra: str, cwd: Path = ROOT) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, str(BENCH / name), *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines[-1].startswith("RATIO "), lines[-5:]
    return lines


@pytest.mark.longest(seconds=130)
@pytest.mark.slow
def test_every_script_runs_quick_and_summary_lists_them(tmp_path):
    for name in ("wrapper_overhead", "sequence_batching", "param_sharing", "memory", "nlg_generation", "image_finetuning",
                 "cpu_isa", "scan_training", "scan_evaluation", "scan_frame_decoding", "compile_speed", "startup"):
        run_script(f"{name}.py", "--quick", "--threads", "1", "--results", str(tmp_path / f"{name}.json"))
        assert json.loads((tmp_path / f"{name}.json").read_text())["rows"]
    out = tmp_path / "benchmarks.md"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    subprocess.run([sys.executable, str(BENCH / "summarize.py"), "--results-dir", str(tmp_path), "--out", str(out)],
                   check=True, env=env)
    text = out.read_text()
    for title in ("Wrapper overhead", "Group-batched", "parameter sharing", "chunking", "shared decoder", "cached features",
                  "Pinned CPU kernels", "SCAN pretraining throughput", "SCAN equituned evaluation", "SCAN frame decoding",
                  "torch.compile", "What a stage pays"):
        assert title in text
    assert "--quick" in text and "torch" in text and "Not measured yet" in text  # pipeline not run here


@pytest.mark.slow
def test_pipeline_times_a_toy_dvc_project(tmp_path):
    toy = tmp_path / "toy"
    toy.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=toy, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=toy, check=True)
    (toy / "dvc.yaml").write_text(
        "stages:\n"
        "  first:\n"
        "    cmd: python -c \"import time; time.sleep(0.5); open('a.txt', 'w').write('a')\"\n"
        "    outs: [a.txt]\n"
        "  second:\n"
        "    cmd: python -c \"import time; time.sleep(1.0); open('b.txt', 'w').write('b')\"\n"
        "    deps: [a.txt]\n"
        "    outs: [b.txt]\n")
    results = tmp_path / "pipeline.json"
    run_script("pipeline.py", "--repo", str(toy), "--in-place", "--results", str(results))
    rows = {r["row_id"]: r for r in json.loads(results.read_text())["rows"]}
    assert [r for r in rows if r.startswith("stage/")] == ["stage/first", "stage/second"]
    # Each stage lasted at least its sleep (a parsing check, not a speed target).
    assert rows["stage/first"]["seconds"] >= 0.5 and rows["stage/second"]["seconds"] >= 1.0
    assert rows["total/cold"]["seconds"] >= 1.5 and rows["total/noop"]["seconds"] > 0


@pytest.mark.slow
def test_paper_gpu_check_runs_quick_on_cpu(tmp_path):
    """The prepared GPU check of the paper profile, at tiny size on CPU: it runs and reports every part (its numbers
    mean nothing here; the GPU numbers are measured only on a GPU machine)."""
    results = tmp_path / "paper_gpu_check.json"
    lines = run_script("paper_gpu_check.py", "--quick", "--threads", "1", "--device", "cpu", "--results", str(results))
    text = "\n".join(lines)
    for part in ("images: ResNet-18", "scan: ", "nlg: ", "total: "):
        assert part in text, text
    rows = {r["row_id"] for r in json.loads(results.read_text())["rows"]}
    assert rows == {"cpu/images/resnet18-c4-equitune", "cpu/images/wrapper-overhead", "cpu/scan/pretrain-rnn",
                    "cpu/nlg/generate", "cpu/total"}
