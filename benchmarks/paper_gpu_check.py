"""Benchmark 7: the paper profile's GPU check, a real slice of each experiment on one GPU, in under 8 minutes.

Run it once on a GPU machine before paying for the whole paper profile; it uses the paper profile's own settings
(params.yaml + profiles/paper.yaml) and the project's code paths:

1. images: ResNet-18 (torchvision architecture; ImageNet weights when torch.hub has them, else random: speed does
   not depend on them) equituned with C4 at the paper's 224 px and batch size, bfloat16/float16 autocast and
   channels-last, for ``--image-steps`` SGD steps (default 300) -> images per second; then the wrapper-overhead
   ratio (EquiTune on B images vs the bare backbone on |G|*B images, forward+backward, timed alternately).
2. scan: one paper pretraining schedule cut to ``--scan-steps`` steps (default 10,000 = 5% of the paper's
   200,000) with the paper's batch size, on the GPU -> steps per second and the projected time of a full cell.
3. nlg: EquiLM generation (the project's group-batched KV-cache decoder) with a GPU batch of ``--lm-batch``
   prompts, with GPT-2 when the hub (or its cache) has it, else a GPT-2-small-sized model with random weights
   -> generated tokens per second, EquiLM vs the base model.

    python benchmarks/paper_gpu_check.py --device cuda            # the check (prints; rows to results/)
    python benchmarks/paper_gpu_check.py --quick                  # CPU smoke test at tiny sizes (numbers mean nothing)

Each part prints its throughput; the wrapper-overhead ratio is the last line (``RATIO ...``).
"""

from __future__ import annotations

import sys
import time

import timing
import torch
import wrapper_overhead

from equitune.core.groups import image_action
from equitune.core.wrappers import EquiTune
from equitune.params import compose, validate
from equitune.pipeline.schema import read_params_file

TARGET_SECONDS = 8 * 60


def paper_params():
    """The paper profile, composed exactly as ``make paper`` does."""
    data = compose(read_params_file(timing.ROOT / "params.yaml"), read_params_file(timing.ROOT / "profiles" / "paper.yaml"))
    return validate(data, "params.yaml + profiles/paper.yaml")


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ images
def images_part(params, device: torch.device, steps: int, quick: bool, repeats: int) -> tuple[dict, dict]:
    from equitune.core.errors import DataError
    from equitune.images.backbones import build_classifier
    from equitune.images.methods import build_method, new_parameters
    from equitune.images.training import autocast_dtype

    settings = params.images.train
    resolution = 32 if quick else params.images.resolution
    batch = 2 if quick else settings.batch_size
    try:
        if quick:
            raise DataError("--quick: no download")
        classifier, weights = build_classifier("resnet18", 10, resolution, pretrained=True), "imagenet"
    except DataError:
        classifier, weights = build_classifier("resnet18", 10, resolution, pretrained=False), "random"
    model = build_method("equitune", "c4", classifier).to(device=device, memory_format=torch.channels_last)
    fresh = {id(p) for p in new_parameters(model, classifier)}
    optimizer = torch.optim.SGD([
        {"params": [p for p in model.parameters() if id(p) not in fresh]},
        {"params": [p for p in model.parameters() if id(p) in fresh], "lr": settings.head_lr or settings.lr}],
        lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    dtype = autocast_dtype(settings, device)  # the paper profile's mixed precision (None on CPU)
    images = torch.rand(batch, 3, resolution, resolution, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    step()  # warm-up: cuDNN autotuning, allocator
    synchronise(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronise(device)
    seconds = time.perf_counter() - start
    row = {"row_id": f"{device.type}/images/resnet18-c4-equitune", "device": str(device), "part": "images",
           "setting": f"ResNet-18 ({weights} weights) C4 equitune, {resolution} px, batch {batch}, {dtype}, "
                      f"channels-last, {steps} steps",
           "weights": weights, "resolution": resolution,
           "batch": batch, "steps": steps, "autocast": str(dtype), "channels_last": True,
           "seconds": round(seconds, 3), "images_per_s": round(steps * batch / seconds, 2),
           "backbone_images_per_s": round(steps * batch * 4 / seconds, 2)}
    row["throughput"] = f"{row['images_per_s']} images/s"
    print(f"images: ResNet-18 ({weights} weights) C4 equitune, {resolution} px, batch {batch}, {dtype}, channels-last:"
          f" {steps} steps in {seconds:.1f} s = {row['images_per_s']} images/s "
          f"({row['backbone_images_per_s']} backbone images/s)", flush=True)

    # The wrapper's overhead over its limit, the bare backbone on the |G|*B transformed images.
    backbone = classifier.to(device=device, memory_format=torch.channels_last)
    action = image_action("c4")
    wrapper = EquiTune(backbone, action)
    order = action.group.order
    x = torch.rand(batch, 3, resolution, resolution, device=device).contiguous(memory_format=torch.channels_last)
    x_all = torch.rand(order * batch, 3, resolution, resolution, device=device).contiguous(
        memory_format=torch.channels_last)
    run_wrapper, run_bare = wrapper_overhead.step_functions(backbone, wrapper, x, x_all, "forward_backward",
                                                            amp=dtype is not None)
    result = timing.compare(run_wrapper, run_bare, repeats=repeats, warmup=2)
    overhead = {"row_id": f"{device.type}/images/wrapper-overhead", "device": str(device), "part": "images",
                "setting": f"EquiTune(ResNet-18, C4) on {batch} vs bare on {order * batch}, forward+backward",
                "batch": batch, "bare_batch": order * batch,
                "wrapper_ms": round(result.a_seconds * 1000, 3), "bare_ms": round(result.b_seconds * 1000, 3),
                "ratio": round(result.ratio, 4), "repeats": repeats}
    print(f"images: wrapper {overhead['wrapper_ms']} ms vs bare backbone on |G|*B {overhead['bare_ms']} ms "
          f"(forward+backward, ratio {result.ratio:.3f})", flush=True)
    return row, overhead


# ------------------------------------------------------------------------------------------------ scan
def scan_part(params, device: torch.device, steps: int, quick: bool) -> dict:
    from equitune.scan.data import generate_split, hold_out_validation
    from equitune.scan.experiment import build_model
    from equitune.scan.training import encode_pairs, pretrain

    rnn = params.scan.grid.rnns[0]
    split = generate_split("add_jump")
    train, _ = hold_out_validation(split.train, params.scan.data.validation_fraction, params.scan.data.validation_seed)
    encoded = encode_pairs(train)
    settings = params.scan.pretrain.model_copy(update={
        "examples": steps * params.scan.pretrain.batch_size,
        "validate_every_examples": steps * params.scan.pretrain.batch_size * 10})  # timing only: no validation
    torch.manual_seed(0)
    model = build_model(params.scan, rnn).to(device)
    start = time.perf_counter()
    pretrain(model, encoded, lambda m: 0.0, settings, generator=torch.Generator().manual_seed(0), device=device)
    synchronise(device)
    seconds = time.perf_counter() - start
    full = params.scan.pretrain.examples / params.scan.pretrain.batch_size
    row = {"row_id": f"{device.type}/scan/pretrain-{rnn}", "device": str(device), "part": "scan",
           "setting": f"{rnn} pretraining, batch {settings.batch_size}, {steps} steps", "cell": rnn,
           "batch": settings.batch_size,
           "steps": steps, "seconds": round(seconds, 3), "steps_per_s": round(steps / seconds, 2),
           "projected_full_pretrain_min": round(full / (steps / seconds) / 60, 1)}
    row["throughput"] = f"{row['steps_per_s']} steps/s (full cell ~{row['projected_full_pretrain_min']} min)"
    print(f"scan: {rnn} pretraining, batch {settings.batch_size}, {steps} steps in {seconds:.1f} s = "
          f"{row['steps_per_s']} steps/s (the paper's {full:.0f} steps: ~{row['projected_full_pretrain_min']} min "
          f"per cell{'' if quick else ', validation not included'})", flush=True)
    return row


# ------------------------------------------------------------------------------------------------ nlg
def nlg_part(params, device: torch.device, batch: int, quick: bool) -> dict:
    from equitune.core.errors import DataError
    from equitune.nlg.decoding import generate
    from equitune.nlg.lm import load_lm

    new_tokens = params.nlg.max_new_tokens
    if quick:
        from transformers import GPT2Config, GPT2LMHeadModel

        lm, source = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=512, bos_token_id=0,
                                                    eos_token_id=0)).eval(), "tiny"
    else:
        try:
            lm, source = load_lm(params.nlg.model, device), params.nlg.model
        except DataError:
            from transformers import GPT2Config, GPT2LMHeadModel

            torch.manual_seed(0)  # GPT-2 small's shape, random weights: decoding speed does not depend on them
            lm, source = GPT2LMHeadModel(GPT2Config()).eval(), "gpt2-sized random"
    lm = lm.to(device)
    vocab = lm.config.vocab_size
    # A group of order 2 swapping two token ids (as man/woman), and prompts of 6 tokens holding one of them.
    from equitune.core.groups import WordCycles

    permutation = WordCycles([["3", "4"]]).bind({str(i): i for i in range(vocab)})
    prompts = torch.randint(5, vocab, (batch, 6), generator=torch.Generator().manual_seed(0))
    prompts[:, 1] = 3
    mask = torch.ones_like(prompts)
    prompts, mask = prompts.to(device), mask.to(device)
    no_stop = torch.zeros(vocab, dtype=torch.bool, device=device)  # every row decodes all its tokens
    rates = {}
    for method in ("base", "equilm"):
        uniform = torch.rand(batch, new_tokens, generator=torch.Generator().manual_seed(1)).to(device)
        def run(method=method, uniform=uniform):
            return generate(lm, prompts, mask, method, permutation, uniform, top_k=params.nlg.top_k,
                            stop_mask=no_stop, pad_id=0)

        run()  # warm-up
        synchronise(device)
        start = time.perf_counter()
        run()
        synchronise(device)
        rates[method] = batch * new_tokens / (time.perf_counter() - start)
    row = {"row_id": f"{device.type}/nlg/generate", "device": str(device), "part": "nlg",
           "setting": f"{source}, batch {batch}, {new_tokens} new tokens", "model": source, "batch": batch,
           "new_tokens": new_tokens, "base_tokens_per_s": round(rates["base"], 1),
           "equilm_tokens_per_s": round(rates["equilm"], 1)}
    row["throughput"] = f"base {row['base_tokens_per_s']}, EquiLM {row['equilm_tokens_per_s']} tokens/s"
    print(f"nlg: {source}, batch {batch}, {new_tokens} new tokens: base {row['base_tokens_per_s']} tokens/s, "
          f"EquiLM (|G| = 2) {row['equilm_tokens_per_s']} tokens/s", flush=True)
    return row


def main() -> int:
    parser = timing.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-steps", type=int, default=None, help="SGD steps of ResNet-18 equituning (300)")
    parser.add_argument("--scan-steps", type=int, default=None, help="SCAN pretraining steps (10000)")
    parser.add_argument("--lm-batch", type=int, default=None, help="prompts decoded together (64)")
    args = parser.parse_args()
    timing.setup_threads(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    device = torch.device(args.device)
    quick = args.quick
    image_steps = args.image_steps or (2 if quick else 300)
    scan_steps = args.scan_steps or (5 if quick else 10_000)
    lm_batch = args.lm_batch or (2 if quick else 64)
    repeats = args.repeats or (1 if quick else 10)
    params = paper_params()
    start = time.perf_counter()
    image_row, overhead = images_part(params, device, image_steps, quick, repeats)
    scan_row = scan_part(params, device, scan_steps, quick)
    nlg_row = nlg_part(params, device, lm_batch, quick)
    total = time.perf_counter() - start
    rows = [image_row, overhead, scan_row, nlg_row,
            {"row_id": f"{device.type}/total", "device": str(device), "part": "total",
             "setting": f"target under {TARGET_SECONDS} s", "seconds": round(total, 1), "target_seconds": TARGET_SECONDS}]
    print(f"total: {total:.0f} s (target under {TARGET_SECONDS} s on one GPU)")
    path = timing.record("paper_gpu_check", args, rows, device=str(device))
    if path:
        print(f"rows written to {path}")
    print(timing.fmt_ratio_line("wrapper/bare, ResNet-18 C4 forward+backward", overhead["ratio"], "<= 1.05"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
