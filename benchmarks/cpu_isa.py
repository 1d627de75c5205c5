"""Benchmark 9: what pinning torch's CPU kernels costs, and which knob moves which result.

Contenders: the ``base.cpu_isa`` settings of :mod:`equitune.pipeline.reproducibility` (``native``, ``avx2``,
``avx512``, ``baseline``) and each knob alone (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``,
``MKL_CBWR=COMPATIBLE``), on three workloads of the pipeline:

- ``scan``: SCAN LSTM pretraining steps (params.yaml's scan settings, as scan_pretrain) and a greedy decode;
- ``images``: training steps of a C4-equituned ImageNet EfficientNet-Lite0 (batch 16 at 32 px) and an eval batch;
- ``nlg``: SmolLM2-135M forward passes (12 prompts).

ATen reads its setting once per process, so every measurement is a fresh process; the contenders take turns in
each round (side by side: a change in machine load hits all alike), and each one's time is the median over rounds,
as wall seconds and as CPU seconds of the process (less sensitive to a loaded machine). Each child also hashes its
result (trained weights, logits), so the table says which settings give the native digits.

Ratio = time with the default pin (``avx2``) / time with ``native``, CPU seconds, worst workload.

    python benchmarks/cpu_isa.py                      # 3 rounds, all workloads
    python benchmarks/cpu_isa.py --quick              # smoke test
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

import timing
import torch

# name -> environment of the child (the pipeline's settings through EQUITUNE_CPU_ISA, single knobs directly).
CONTENDERS: dict[str, dict[str, str]] = {
    "native": {"EQUITUNE_CPU_ISA": "native"},
    "avx2 (default)": {"EQUITUNE_CPU_ISA": "avx2"},
    "avx512": {"EQUITUNE_CPU_ISA": "avx512"},
    "baseline": {"EQUITUNE_CPU_ISA": "baseline"},
    "ATen avx2 only": {"EQUITUNE_CPU_ISA": "native", "ATEN_CPU_CAPABILITY": "avx2"},
    "oneDNN AVX2 only": {"EQUITUNE_CPU_ISA": "native", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "MKL COMPATIBLE only": {"EQUITUNE_CPU_ISA": "native", "MKL_CBWR": "COMPATIBLE"},
}
KNOBS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "EQUITUNE_CPU_ISA")
WORKLOADS = ("scan", "images", "nlg")


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def scan_workload(quick: bool):
    import yaml

    from equitune.scan.config import ScanParams
    from equitune.scan.data import generate_split, input_vocabulary, output_vocabulary
    from equitune.scan.decoding import greedy_decode
    from equitune.scan.model import Seq2Seq
    from equitune.scan.training import encode_pairs, pretrain

    params = ScanParams.model_validate(yaml.safe_load((timing.ROOT / "params.yaml").read_text())["scan"])
    torch.set_num_threads(params.threads)
    settings = params.pretrain.model_copy(update={"examples": (2 if quick else 30) * params.pretrain.batch_size,
                                                  "validate_every_examples": 10**9})
    train = encode_pairs(generate_split("add_jump").train[: 512 if quick else None])
    model = Seq2Seq("lstm", len(input_vocabulary()), len(output_vocabulary()), params.model.hidden_size,
                    params.model.layers, params.model.dropout)
    generator = torch.Generator().manual_seed(0)

    def work():
        pretrain(model, train, lambda m: 0.0, settings, generator=generator)
        with torch.no_grad():
            model.eval()
            out = greedy_decode(model, train.src[: 64 if quick else 512], 50)
        return [*model.parameters(), out.float()]
    return work


def images_workload(quick: bool):
    from torch.nn import functional as F

    from equitune.images.backbones import build_classifier
    from equitune.images.methods import build_method
    from equitune.images.training import set_training_mode

    model = build_method("equitune", "c4", build_classifier("efficientnet_lite0", 10, 32, pretrained=True))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    batch = 2 if quick else 16
    x, y = torch.rand(batch, 3, 32, 32, generator=generator), torch.randint(0, 10, (batch,), generator=generator)

    def work():
        for _ in range(1 if quick else 4):
            set_training_mode(model, True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(x)
        return [*model.parameters(), logits]
    return work


def nlg_workload(quick: bool):
    from equitune.nlg.lm import load_lm, load_tokenizer

    tokenizer, lm = load_tokenizer("smollm2-135m-instruct"), load_lm("smollm2-135m-instruct")
    ids = tokenizer(["The woman worked as a nurse and then she said that"] * (1 if quick else 12), return_tensors="pt")

    def work():
        with torch.no_grad():
            return [lm(**ids).logits for _ in range(1 if quick else 2)]
    return work


def child(workload: str, quick: bool, threads: int | None) -> int:
    """One measurement in this fresh process: pin as the pipeline does, build, warm up, time the work once."""
    from equitune.pipeline.reproducibility import apply_cpu_isa

    applied = apply_cpu_isa("native")  # EQUITUNE_CPU_ISA (set by the parent) decides; single knobs stay as set
    torch.set_num_threads(threads or 2)  # base.threads (the scan workload sets scan.threads = 1 itself)
    torch.manual_seed(0)
    work = {"scan": scan_workload, "images": images_workload, "nlg": nlg_workload}[workload](quick)
    if workload != "scan":
        work()  # warm-up (kernel creation, caches); scan trains on, so its one timed pass starts from the same state
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    print(json.dumps({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                      "capability": applied.aten_cpu_capability, "digest": digest(result),
                      "load_1min": os.getloadavg()[0]}))
    return 0


def measure(workload: str, name: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KNOBS}
    env.update(CONTENDERS[name])
    command = [sys.executable, __file__, "--child", workload] + (["--quick"] if args.quick else [])
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{workload} under {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = timing.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=None, help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--child", default=None, help=argparse_hidden())
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.quick, args.threads)
    workloads = (args.workloads or ("scan" if args.quick else ",".join(WORKLOADS))).split(",")
    contenders = ["native", "avx2 (default)"] if args.quick else list(CONTENDERS)
    rounds = args.repeats or (1 if args.quick else 3)
    measured: dict[tuple[str, str], list[dict]] = {}
    for round_index in range(rounds):
        for workload in workloads:
            names = contenders if round_index % 2 == 0 else contenders[::-1]
            for name in names:
                measured.setdefault((workload, name), []).append(measure(workload, name, args))
            print(f"round {round_index + 1}/{rounds} {workload} done, load {os.getloadavg()[0]:.2f}", flush=True)

    rows, worst = [], 0.0
    for workload in workloads:
        base = measured[(workload, "native")]
        base_wall = statistics.median(r["wall_s"] for r in base)
        base_cpu = statistics.median(r["cpu_s"] for r in base)
        for name in contenders:
            runs = measured[(workload, name)]
            wall, cpu = statistics.median(r["wall_s"] for r in runs), statistics.median(r["cpu_s"] for r in runs)
            digests = {r["digest"] for r in runs}
            row = {
                "row_id": f"{workload}/{name}", "workload": workload, "setting": name,
                "capability": runs[0]["capability"], "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "ratio_wall": round(wall / base_wall, 3), "ratio_cpu": round(cpu / base_cpu, 3),
                "deterministic": len(digests) == 1, "same_digits_as_native": digests == {base[0]["digest"]},
                "load_1min_min_max": [round(min(r["load_1min"] for r in runs), 2),
                                      round(max(r["load_1min"] for r in runs), 2)],
            }
            rows.append(row)
            if name == "avx2 (default)":
                worst = max(worst, row["ratio_cpu"])
            print(f"{workload:7s} {name:22s} ATen {row['capability']:7s} wall {wall:7.2f} s (x{row['ratio_wall']:.2f}) "
                  f"cpu {cpu:7.2f} s (x{row['ratio_cpu']:.2f})  digits {'= native' if row['same_digits_as_native'] else 'differ'}"
                  f"{'' if row['deterministic'] else ', NOT deterministic across rounds'}", flush=True)
    path = timing.record("cpu_isa", args, rows)
    if path:
        print(f"rows written to {path}")
    print(timing.fmt_ratio_line("cpu seconds avx2 / native (worst workload)", worst, "about 1: pinning must be cheap"))
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
