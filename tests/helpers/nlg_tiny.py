"""Tiny, random, offline stand-ins for the NLG tests: a 2-layer Llama with a small vocabulary, and a word tokenizer."""

from __future__ import annotations

import torch


def tiny_lm(vocab_size: int = 40, dtype: torch.dtype = torch.float32, seed: int = 0, arch: str = "llama"):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2)
        model = GPT2LMHeadModel(config)
    # Random init is small; scale weights up so the distributions are far from uniform (a sharper test).
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model.to(dtype).eval()



def sample_alone(next_log_probs, stream, stop_mask: torch.Tensor, steps: int, top_k: int):
    """The reference decoder of one stream: no batch, no cache. ``next_log_probs(context)`` gives the model's
    next-token log-probs ``[V]`` after the token list ``context`` (prompt + generated); each step samples top-k with
    the stream's own uniform number and stops at a stop token. Returns (generated tokens, per-step log-probs)."""
    from equitune.nlg.equilm import sample_top_k

    generated, distributions = [], []
    for step in range(steps):
        with torch.no_grad():
            log_probs = next_log_probs(list(stream.prompt) + generated)
        distributions.append(log_probs)
        token = int(sample_top_k(log_probs.unsqueeze(0), top_k, stream.uniform[step:step + 1])[0])
        generated.append(token)
        if stop_mask[token]:
            break
    return generated, torch.stack(distributions)

class WordTokenizer:
    """Greedy longest-match tokenizer over a fixed list of surface forms (enough for the word-list rules)."""

    def __init__(self, forms: list[str]):
        self.forms = list(forms)
        self.ids = {f: i for i, f in enumerate(self.forms)}
        self.longest = max(len(f) for f in self.forms)

    def __len__(self) -> int:
        return len(self.forms)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out, i = [], 0
        while i < len(text):
            for j in range(min(len(text), i + self.longest), i, -1):
                if text[i:j] in self.ids:
                    out.append(self.ids[text[i:j]])
                    i = j
                    break
            else:
                raise ValueError(f"cannot tokenize {text[i:]!r}")
        return out

    def decode(self, ids) -> str:
        return "".join(self.forms[i] for i in ids)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.forms[i] for i in ids]
