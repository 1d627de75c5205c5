"""Benchmark 2: group-batched versus looped-per-group-element equituned decoding, same model, same outputs.

The authors decode SCAN and generate with EquiGPT2 one group element at a time (and one example at a time).
This project batches the |G| transformed copies into the batch axis. Both paths below run the same model on the
same examples with the same batch of B examples; the only difference is one call per step on |G|*B rows
(batched) versus |G| calls on B rows (looped, the authors' order of work). Both must produce the same tokens
(checked: the script fails otherwise). B = 1 is the authors' setting (a fixed subset of the examples: the whole
split at batch 1 takes minutes); B = 128 (SCAN, whole test split) and 16 (LM) show what is left of the gain when
examples are batched too, as this project's pipeline does.

(a) SCAN: equituned greedy decoding of the whole Add-Jump test split (7,706 commands, from equitune.scan.data)
    with the default profile's seq2seq (equitune.scan.model: LSTM, hidden 64, attention after the RNN, commands
    padded to 9 tokens; random weights: no <eos>, so every batch runs the full 49 steps). Batched =
    equitune.scan.decoding.equituned_decode; looped = the same steps with one encode/decode_step call per group
    element. Both follow the project's thread choice (equitune.scan.decoding.decoding_threads: one thread for
    fewer than 1,024 rows per call), so that neither pays for a second thread where it only adds
    synchronisation; the SCAN target is that batched is never slower, at any batch size, 1 included.
(b) EquiLM: top-k (k=40) generation of 15 new tokens with a KV cache. Batched = equitune.nlg.decoding.generate;
    looped = the same steps with one LM call per group element and its own cache. Default model: a small random
    Llama-architecture LM (``--lm smollm2-135m-instruct`` uses the NLG experiment's real model, slower).
    Sampling uses fixed per-row uniforms, so the two paths must agree token for token.

Groups: |G| = 2 (jump<->run / JUMP<->RUN; one word pair for the LM) and |G| = 4 (the cycle over the four
verbs; two 4-cycles of words for the LM). Ratio = looped time / batched time; targets: SCAN >= 1.0 at every batch
size and |G| (the last line, the smallest), the LM >= 1.5 for |G| = 2.

    python benchmarks/sequence_batching.py          # default sizes
    python benchmarks/sequence_batching.py --quick  # smoke test
"""

from __future__ import annotations

import sys

import timing
import torch
from torch.nn import functional as F

from equitune.core.groups import WordCycles
from equitune.nlg import backbone, decoding, equilm
from equitune.scan import decoding as scan_decoding
from equitune.scan.data import generate_split, input_vocabulary, output_vocabulary
from equitune.scan.model import PAD_ID, Seq2Seq

TARGET = 1.5  # the LM rows, |G| = 2
SCAN_TARGET = 1.0  # the SCAN rows: never slower, at every batch size
SCAN_MAX_LENGTH = 49  # longest SCAN action sequence (48) + <eos>

SCAN_GROUPS = {
    2: WordCycles([["jump", "run"]], output_cycles=[["JUMP", "RUN"]]),
    4: WordCycles([["walk", "look", "run", "jump"]], output_cycles=[["WALK", "LOOK", "RUN", "JUMP"]]),
}
LM_WORDS = {2: [[" man", " woman"]], 4: [[" man", " woman", " boy", " girl"], [" he", " she", " him", " her"]]}
TINY_LM_IDS = {2: [[10, 11]], 4: [[10, 11, 12, 13], [20, 21, 22, 23]]}


# ------------------------------------------------------------------------------------------------- SCAN
class ScanDecoders:
    """Equituned greedy decoding: the project's batched decoder, and the same math looped over group elements."""

    def __init__(self, model: Seq2Seq, group: WordCycles, max_length: int):
        self.model, self.max_length = model, max_length
        self.input_perm = group.bind(input_vocabulary())
        self.output_perm = group.bind_output(output_vocabulary())
        self.group = self.input_perm.group

    def batched(self, src: torch.Tensor) -> torch.Tensor:
        return scan_decoding.equituned_decode(self.model, src, self.max_length, self.input_perm, self.output_perm)

    def looped(self, src: torch.Tensor) -> torch.Tensor:
        with scan_decoding.decoding_threads(src.shape[0]):  # each call decodes B rows
            return self._looped(src)

    @torch.no_grad()
    def _looped(self, src: torch.Tensor) -> torch.Tensor:
        """One group element at a time (the reference's order of work), same model and same arithmetic."""
        group, on_ids, on_scores = self.group, self.output_perm.on_ids, self.output_perm.on_scores
        encoded = [self.model.encode(self.input_perm.on_ids.apply(src, g)) for g in group]
        hiddens = [e.hidden for e in encoded]
        tokens = torch.full((src.shape[0],), scan_decoding.SOS_ID, dtype=torch.long, device=src.device)
        finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        outputs = []
        for _ in range(self.max_length):
            mapped_back = []
            for g in group:
                log_probs, hiddens[g] = self.model.decode_step(on_ids.apply(tokens, g), hiddens[g], encoded[g])
                mapped_back.append(on_scores.apply(log_probs, group.inverse(g)))
            chosen = torch.stack(mapped_back).mean(dim=0).argmax(dim=-1).masked_fill(finished, PAD_ID)
            outputs.append(chosen)
            finished = finished | (chosen == scan_decoding.EOS_ID)
            tokens = chosen
            if bool(finished.all()):
                break
        return torch.stack(outputs, dim=1)


def scan_test_chunks(batch: int, limit: int | None) -> list[torch.Tensor]:
    """The Add-Jump test commands as padded id batches (all-padding columns dropped, as the pipeline does)."""
    index = {w: i for i, w in enumerate(input_vocabulary())}
    commands = [command for command, _ in generate_split("add_jump").test]
    if limit:
        commands = commands[:: max(1, len(commands) // limit)][:limit]
    chunks = []
    for start in range(0, len(commands), batch):
        rows = [[index[w] for w in c.split()] for c in commands[start:start + batch]]
        ids = torch.full((len(rows), max(map(len, rows))), PAD_ID, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
        chunks.append(ids)
    return chunks


# ----------------------------------------------------------------------------------------------- EquiLM
def tiny_causal_lm(vocab_size: int, hidden: int, layers: int = 2, seed: int = 0):
    """A small random Llama-architecture causal LM (transformers): cost per step depends on sizes, not weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


class LMGenerators:
    """EquiLM top-k generation: the project's batched ``generate`` and the same steps looped over group elements."""

    def __init__(self, lm, cycles_of_ids: list[list[int]], new_tokens: int, top_k: int = 40):
        self.lm, self.new_tokens, self.top_k = lm, new_tokens, top_k
        vocab_size = backbone.lm_vocab_size(lm)
        vocab = [f"id{i}" for i in range(vocab_size)]  # words named by token id
        self.permutation = WordCycles([[f"id{i}" for i in c] for c in cycles_of_ids]).bind(vocab)
        self.group = self.permutation.group
        self.pad_id = next(i for i in range(vocab_size) if i not in {t for c in cycles_of_ids for t in c})
        self.no_stop = torch.zeros(vocab_size, dtype=torch.bool)  # fixed length: both paths do the same work
        self.cache_kwarg = backbone.cache_keyword(lm)  # the project's own helpers, so both paths call the LM alike

    def uniforms(self, batch: int, seed: int) -> torch.Tensor:
        return torch.rand(batch, self.new_tokens, generator=torch.Generator().manual_seed(seed))

    def batched(self, prompts: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        return decoding.generate(self.lm, prompts, torch.ones_like(prompts), "equilm", self.permutation, uniform,
                               top_k=self.top_k, stop_mask=self.no_stop, pad_id=self.pad_id).tokens

    @torch.no_grad()
    def looped(self, prompts: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        group, on_ids, on_scores = self.group, self.permutation.on_ids, self.permutation.on_scores
        mask = torch.ones_like(prompts)
        positions = backbone.position_ids(mask)
        outputs = [self.lm(input_ids=on_ids.apply(prompts, g), attention_mask=mask, position_ids=positions,
                           use_cache=True, logits_to_keep=1) for g in group]
        next_position = positions[:, -1:] + 1
        tokens = []
        for step in range(self.new_tokens):
            rows = torch.stack([on_scores.apply(F.log_softmax(outputs[g].logits[:, -1], dim=-1), group.inverse(g))
                                for g in group])
            token = equilm.sample_top_k(equilm.combine_group_log_probs(rows, "equilm"), self.top_k, uniform[:, step])
            tokens.append(token)
            if step == self.new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            outputs = [self.lm(input_ids=on_ids.apply(token, g).unsqueeze(1), attention_mask=mask,
                               position_ids=next_position, use_cache=True,
                               **{self.cache_kwarg: backbone.cache_of(outputs[g])}) for g in group]
            next_position = next_position + 1
        return torch.stack(tokens, dim=1)


def load_lm(name: str, quick: bool):
    """(model, cycles of token ids per group order, prompt token ids)."""
    if name == "tiny":
        lm = tiny_causal_lm(vocab_size=512 if quick else 2048, hidden=64 if quick else 128)
        return lm, TINY_LM_IDS, None
    from equitune.nlg.lm import load_lm as load_project_lm
    from equitune.nlg.lm import load_tokenizer

    tokenizer, lm = load_tokenizer(name), load_project_lm(name)
    cycles = {}
    for order, word_sets in LM_WORDS.items():
        ids = [[tokenizer.encode(w, add_special_tokens=False) for w in words] for words in word_sets]
        if any(len(i) != 1 for s in ids for i in s):
            raise SystemExit(f"{name}: the words {word_sets} must each be one token")
        cycles[order] = [[i[0] for i in s] for s in ids]
    return lm, cycles, tokenizer


def check_same(batched: list[torch.Tensor], looped: list[torch.Tensor], what: str) -> None:
    if len(batched) != len(looped):
        raise SystemExit(f"{what}: {len(batched)} batched outputs for {len(looped)} looped ones")
    for i, (x, y) in enumerate(zip(batched, looped, strict=True)):
        if x.shape != y.shape or not torch.equal(x, y):
            raise SystemExit(f"{what}: batched and looped decoding disagree on batch {i}; the benchmark is invalid")


def timed_pair(looped, batched, repeats: int, what: str):
    """Time the two whole-split callables alternately; the last outputs of both must be identical.

    Each pass ends by collecting its tokens (``.cpu()``), which waits for the device's work on CUDA.
    """
    looped_out, batched_out = [], []
    result = timing.compare(lambda: looped_out.append([t.cpu() for t in looped()]),
                            lambda: batched_out.append([t.cpu() for t in batched()]),
                            repeats=repeats, warmup=0)  # warmed up by the caller on one batch
    check_same(batched_out[-1], looped_out[-1], what)
    return result, batched_out[-1]


def profile_if_missed(row: dict, looped, batched, quick: bool) -> None:
    """A |G| = 2 row under the target gets both paths' top operators (one batch each) stored with it."""
    if row["met"] is False and not quick:
        row["profile_looped_top_ms"] = timing.top_operators(timing.self_cpu_ms(looped))
        row["profile_batched_top_ms"] = timing.top_operators(timing.self_cpu_ms(batched))


def main() -> int:
    parser = timing.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--orders", nargs="+", type=int, default=[2, 4], choices=[2, 4])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--parts", nargs="+", default=["scan", "lm"], choices=["scan", "lm"])
    parser.add_argument("--scan-batches", nargs="+", type=int, default=[1, 8, 128, 1024],
                        help="SCAN commands per batch in both paths; 1 is the authors' batch size")
    parser.add_argument("--scan-limit", type=int, default=None, help="decode only this many test commands")
    parser.add_argument("--small-batch-commands", type=int, default=128,
                        help="commands decoded at batch sizes below 32 (default 128; 128 and up decode all 7,706)")
    parser.add_argument("--lm", default="tiny", help="'tiny' (random, default) or an nlg.model, e.g. smollm2-135m-instruct")
    parser.add_argument("--lm-batches", nargs="+", type=int, default=[1, 16],
                        help="prompts per batch in both paths; 1 is the authors' batch size (16 prompts at batch < 8, else 64)")
    args = parser.parse_args()
    timing.setup_threads(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    device = torch.device(args.device)
    repeats = args.repeats or (1 if args.quick else 2)

    rows = []
    if "scan" in args.parts:
        torch.manual_seed(0)  # random weights: no <eos> is likely, so every batch decodes the full 49 steps
        model = Seq2Seq("lstm", len(input_vocabulary()), len(output_vocabulary()), hidden_size=64,
                        attention="after_rnn", source_length=9).eval().to(device)
        max_length = 6 if args.quick else SCAN_MAX_LENGTH
        for batch in ([8] if args.quick else args.scan_batches):
            # Small batches over all 7,706 commands would take minutes per pass: they decode a fixed subset.
            limit = 24 if args.quick else (args.scan_limit or (None if batch >= 32 else args.small_batch_commands))
            chunks = [c.to(device) for c in scan_test_chunks(batch, limit)]
            sequences = sum(len(c) for c in chunks)
            for order in args.orders:
                decoders = ScanDecoders(model, SCAN_GROUPS[order], max_length)
                decoders.batched(chunks[0]), decoders.looped(chunks[0])  # warm-up
                result, outputs = timed_pair(lambda d=decoders, cs=chunks: [d.looped(c) for c in cs],
                                             lambda d=decoders, cs=chunks: [d.batched(c) for c in cs], repeats,
                                             f"SCAN |G|={order} batch {batch}")
                tokens = sum(int((t != PAD_ID).sum()) for t in outputs)
                rows.append(_row("scan_addjump_test", order, sequences, batch, tokens, result, repeats))
                profile_if_missed(rows[-1], lambda d=decoders, c=chunks[0]: d.looped(c),
                                  lambda d=decoders, c=chunks[0]: d.batched(c), args.quick)
                print(_describe(rows[-1]), flush=True)
    if "lm" in args.parts:
        lm, cycles, tokenizer = load_lm(args.lm, args.quick)
        lm = lm.to(device)
        new_tokens = 4 if args.quick else 15  # the paper's at most 15 new tokens
        for batch in ([2] if args.quick else args.lm_batches):
            n_prompts = 4 if args.quick else (16 if batch < 8 else 64)
            if tokenizer is None:
                prompts = torch.randint(30, backbone.lm_vocab_size(lm), (n_prompts, 8),
                                        generator=torch.Generator().manual_seed(1))
                prompts[:, 1] = cycles[2][0][0]  # every prompt holds a word the group moves, like "The man ..."
            else:
                prompts = tokenizer(["The man worked as"] * n_prompts, return_tensors="pt").input_ids
            for order in args.orders:
                generators = LMGenerators(lm, cycles[order], new_tokens)
                batches = [(prompts[i:i + batch].to(device), generators.uniforms(len(prompts[i:i + batch]), seed=i).to(device))
                           for i in range(0, n_prompts, batch)]
                generators.batched(*batches[0]), generators.looped(*batches[0])  # warm-up
                result, _ = timed_pair(lambda g=generators, bs=batches: [g.looped(p, u) for p, u in bs],
                                       lambda g=generators, bs=batches: [g.batched(p, u) for p, u in bs], repeats,
                                       f"EquiLM |G|={order} batch {batch}")
                rows.append(_row(f"equilm_generation_{args.lm}", order, n_prompts, batch, n_prompts * new_tokens,
                                 result, repeats))
                profile_if_missed(rows[-1], lambda g=generators, b=batches[0]: g.looped(*b),
                                  lambda g=generators, b=batches[0]: g.batched(*b), args.quick)
                print(_describe(rows[-1]), flush=True)
    for row in rows:
        row["device"] = str(device)
        if device.type != "cpu":
            row["row_id"] = f"{device.type}/{row['row_id']}"
    path = timing.record("sequence_batching", args, rows, device=str(device))
    if path:
        print(f"rows written to {path}")
    scan_rows = [r["ratio"] for r in rows if r["task"] == "scan_addjump_test"]
    if scan_rows:
        print(timing.fmt_ratio_line("SCAN looped/batched, smallest over batch sizes and |G|", min(scan_rows),
                                    f">= {SCAN_TARGET} at every batch size"))
    else:
        at_two = [r["ratio"] for r in rows if r["group_order"] == 2]
        worst = min(at_two or [r["ratio"] for r in rows])
        label = "looped/batched, smallest at |G|=2" if at_two else "looped/batched, smallest"
        print(timing.fmt_ratio_line(label, worst, f">= {TARGET} at |G|=2"))
    return 0


def _describe(row: dict) -> str:
    return (f"{row['row_id']:34s} batch {row['batch']:3d}: looped {row['looped_seq_per_s']:8.1f} seq/s "
            f"{row['looped_tok_per_s']:9.1f} tok/s | batched {row['batched_seq_per_s']:8.1f} seq/s "
            f"{row['batched_tok_per_s']:9.1f} tok/s | speed-up {row['ratio']:.2f}")


def _row(task: str, order: int, sequences: int, batch: int, tokens: int, result, repeats: int) -> dict:
    looped, batched = result.a_seconds, result.b_seconds
    return {
        "row_id": f"{task}/G{order}/B{batch}", "task": task, "group_order": order, "sequences": sequences, "batch": batch,
        "generated_tokens": tokens, "repeats": repeats,
        "looped_s": round(looped, 4), "batched_s": round(batched, 4),
        "looped_seq_per_s": round(sequences / looped, 2), "batched_seq_per_s": round(sequences / batched, 2),
        "looped_tok_per_s": round(tokens / looped, 2), "batched_tok_per_s": round(tokens / batched, 2),
        "ratio": round(looped / batched, 4),
        **({"target": f">= {SCAN_TARGET}", "met": looped / batched >= SCAN_TARGET} if task == "scan_addjump_test" else
           {"target": f">= {TARGET} at |G|=2", "met": (looped / batched >= TARGET) if order == 2 else None}),
    }


if __name__ == "__main__":
    sys.exit(main())
