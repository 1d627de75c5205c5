"""# Fair generation with EquiLM around any causal LM

EquiLM makes a language model treat demographic words alike: with a group ``G`` that swaps ``man <-> woman`` and
``he <-> she``, it averages the model's next-token log-probabilities over the swapped contexts (each mapped back to
the original words), so that ``p(g.y | g.x) = p(y | x)``: the probability of a continuation after "The man ..."
is the probability of the swapped continuation after "The woman ...".

In this tutorial you will:

1. build a tiny causal LM (a random GPT-2, so that it runs in seconds without downloads) and its word vocabulary;
2. bind the group ``man <-> woman, he <-> she`` to the LM's vocabulary;
3. wrap the LM in `equitune.hf.EquiLMForCausalLM` and decode with transformers' own `model.generate(...)`;
4. check the fairness identity on the samples: the sample for the swapped prompt is the swapped sample;
5. see that the bare LM does not have it.

With a real checkpoint only the first two steps change (see the last step). The pipeline's NLG experiment does the
same around SmolLM2-135M-Instruct with its own batched decoder (`equitune.nlg.decoding`); tests/library/test_hf.py
checks that this wrapper under `generate()` gives the same tokens, token for token.
"""

# %%
# A tiny causal LM and a word-level vocabulary. A random model writes gibberish, but fairness is a property of how
# the words are treated, not of what they mean, so gibberish shows it as well as real text. `initializer_range`
# makes the random weights larger than GPT-2's default, so that its distributions are far from uniform.
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from equitune.core import WordCycles
from equitune.hf import EquiLMForCausalLM, InverseCDFSampler

torch.manual_seed(0)
WORDS = ("<pad> <eos> The A man woman he she his her said that was worked as a known for doctor nurse engineer "
         "teacher cook kind smart and in the city village house . ,").split()
word_to_id = {word: i for i, word in enumerate(WORDS)}
PAD, EOS = word_to_id["<pad>"], word_to_id["<eos>"]
config = GPT2Config(vocab_size=len(WORDS), n_embd=64, n_layer=2, n_head=4, n_positions=64, initializer_range=0.5,
                    pad_token_id=PAD, bos_token_id=EOS, eos_token_id=EOS)
lm = GPT2LMHeadModel(config).eval()


def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Whitespace tokenizer, left padded (a causal LM continues the last token of every row)."""
    rows = [[word_to_id[w] for w in text.split()] for text in prompts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def decode(ids: torch.Tensor) -> list[str]:
    return [" ".join(WORDS[i] for i in row if i != PAD) for row in ids.tolist()]


# %%
# The group: one element swaps both word sets at once. `bind` turns it into a permutation of the LM's token ids
# (every other id stays where it is); `vocab_size` is the size of the LM's logits, which for real checkpoints is
# often larger than the tokenizer's vocabulary.
vocab_size = lm.get_output_embeddings().weight.shape[0]
gender = WordCycles([["man", "woman"], ["he", "she"]]).bind(word_to_id, vocab_size=vocab_size)
swap = 1  # element 0 is the identity
prompts = ["The man worked as a", "he said that the woman was"]
ids, mask = encode(prompts)
swapped_ids = gender.on_ids.apply(ids, swap)
assert decode(swapped_ids) == ["The woman worked as a", "she said that the man was"]
print(decode(swapped_ids))

# %%
# Wrap the LM. `EquiLMForCausalLM` is a transformers model: its forward runs the |G| swapped copies of the batch
# through the LM as one batch (the KV cache holds all of them) and returns the combined next-token log-probs as
# logits, so `generate()` decodes it like any other causal LM: greedy, sampling, top-k, beam search, with the cache.
# Greedy decoding is already fair: the continuation of the swapped prompt is the swapped continuation. Other
# generate() options keep working; `suppress_tokens` keeps the padding token out of the text.
fair = EquiLMForCausalLM(lm, gender, method="equilm")
options = dict(max_new_tokens=10, pad_token_id=PAD, eos_token_id=None, suppress_tokens=[PAD])
greedy = fair.generate(ids, attention_mask=mask, do_sample=False, **options)[:, ids.shape[1]:]
greedy_swapped = fair.generate(swapped_ids, attention_mask=mask, do_sample=False, **options)[:, ids.shape[1]:]
assert torch.equal(greedy_swapped, gender.on_ids.apply(greedy, swap))
for prompt, text in zip(decode(ids), decode(greedy), strict=True):
    print(f"{prompt!r} -> {text!r}")

# %%
# Sampling. `generate(do_sample=True)` draws with `torch.multinomial`, which gives no relation between the sample
# for a prompt and the sample for its swap. `InverseCDFSampler` makes `generate()` draw each token from the top-k
# by inverse CDF from uniform numbers you give (the project's decoder samples the same way). With the same numbers
# for a prompt and its swap (common random numbers), EquiLM's samples are exact swaps of each other.
# Five samples per prompt: the rows repeat the prompts, each row with its own numbers.
samples = 5
many_ids, many_mask = ids.repeat_interleave(samples, dim=0), mask.repeat_interleave(samples, dim=0)
uniform = torch.rand(many_ids.shape[0], options["max_new_tokens"], generator=torch.Generator().manual_seed(1))


def sample(model, prompt_ids: torch.Tensor) -> torch.Tensor:
    sampler = InverseCDFSampler(uniform, prompt_length=prompt_ids.shape[1], top_k=10)
    out = model.generate(prompt_ids, attention_mask=many_mask, do_sample=True, logits_processor=[sampler], **options)
    return out[:, prompt_ids.shape[1]:]


fair_samples = sample(fair, many_ids)
fair_swapped = sample(fair, gender.on_ids.apply(many_ids, swap))
assert torch.equal(fair_swapped, gender.on_ids.apply(fair_samples, swap))
assert len(set(map(tuple, fair_samples.tolist()))) > 1  # the numbers do drive the samples
for text in decode(fair_samples[:samples]):
    print(f"{prompts[0]!r} -> {text!r}")

# %%
# The identity behind it holds for every next token, not only the sampled ones: `fairness_errors` measures
# `max |log p(g.y | g.x) - log p(y | x)|` per group element (float32 round-off here).
errors = fair.fairness_errors(encode(["The man said that he was"])[0])
print(errors)
assert max(errors.values()) < 1e-5

# %%
# The bare LM has no such identity: the same random numbers give a sample for "The woman ..." that is not the
# swapped sample for "The man ...", and the probability of "doctor" depends on the demographic word.
bare_samples = sample(lm, many_ids)
bare_swapped = sample(lm, gender.on_ids.apply(many_ids, swap))
assert not torch.equal(bare_swapped, gender.on_ids.apply(bare_samples, swap))
man, woman = encode(["The man worked as a", "The woman worked as a"])[0]
doctor = word_to_id["doctor"]
with torch.no_grad():
    bare_doctor = lm(torch.stack([man, woman])).logits[:, -1].log_softmax(-1)[:, doctor].exp()
    fair_doctor = fair(torch.stack([man, woman])).logits[:, -1].exp()[:, doctor]
print(f"p(doctor | The man/woman worked as a): bare {bare_doctor.tolist()}, EquiLM {fair_doctor.tolist()}")
assert abs(float(bare_doctor[0] - bare_doctor[1])) > 1e-3
assert abs(float(fair_doctor[0] - fair_doctor[1])) < 1e-6

# %%
# With a real checkpoint (downloaded once by transformers), only the model, the tokenizer and the binding change:
#
#     from transformers import AutoModelForCausalLM, AutoTokenizer
#     tokenizer = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M", padding_side="left")
#     lm = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M").eval()
#     vocab_size = lm.get_output_embeddings().weight.shape[0]
#     cycles = [[" man", " woman"], [" he", " she"]]  # the words as they appear mid-sentence
#     pieces = {form: tokenizer.encode(form, add_special_tokens=False) for cycle in cycles for form in cycle}
#     assert all(len(ids) == 1 for ids in pieces.values())  # a permutation of tokens needs one token per word
#     gender = WordCycles(cycles).bind({form: ids[0] for form, ids in pieces.items()}, vocab_size=vocab_size)
#     fair = EquiLMForCausalLM(lm, gender, method="equilm")
#     batch = tokenizer(["The man worked as a", "The woman worked as a"], return_tensors="pt", padding=True)
#     fair.generate(**batch, max_new_tokens=15, do_sample=True, top_k=40)
#
# For the project's word lists (every single-token form: " man", "man", " Man", "Man", ... and the general words
# he/she/his/... for R-EquiLM), `equitune.nlg.words.bind_axis(load_word_lists(), "gender", tokenizer)` gives
# `.permutation(vocab_size)` and `.general_mask(vocab_size)`:
# `EquiLMForCausalLM(lm, permutation, "r_equilm", general_mask)`. The pipeline's NLG experiment runs EquiLM and
# R-EquiLM this way around SmolLM2-135M-Instruct (`nlg.model` in params.yaml).
print("fair generation: every check passed")
