"""EquiLMForCausalLM under transformers' own generate(), on tiny random GPT-2 and Llama models (float64, offline).

Every check compares with something computed independently of the wrapper: the project's decoder
(:func:`equitune.nlg.decoding.generate`, which batches, caches and samples its own way), the teacher-forced
:class:`~equitune.nlg.equilm.FairLM`, the group images of the outputs, or the same generate() without a cache.
The bare LM is the negative control: its outputs for a moved prompt are not the moved outputs.
Words are bound to token ids through a fake vocabulary (no tokenizer, nothing downloaded).
"""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import LogitsProcessorList

from equitune.core import ConfigError, WordCycles
from equitune.hf import EquiLMForCausalLM, InverseCDFSampler
from equitune.nlg.decoding import generate as project_generate
from equitune.nlg.equilm import FairLM
from helpers.nlg_tiny import tiny_lm

VOCAB = 300
PAD = 0  # the tiny models' padding id
WORDS = ["<pad>", "<bos>", "<eos>", "the", "a", "man", "woman", "person", "boy", "girl", "child", "he", "she", "his",
         "her", "said", "that", "was", "worked", "as", "doctor", "nurse"]
VOCABULARY = {word: i for i, word in enumerate(WORDS + [f"w{i}" for i in range(len(WORDS), VOCAB)])}
GROUPS = {
    "order2": WordCycles([["man", "woman"], ["boy", "girl"]]),
    "order3": WordCycles([["man", "woman", "person"], ["boy", "girl", "child"]]),  # g and g^-1 differ
}
GROUP_WORDS = sorted({word for cycles in GROUPS.values() for cycle in cycles.cycles for word in cycle})
GENERAL = ["he", "she", "his", "her"]  # R-EquiLM takes these from the untransformed context
PROMPTS = [["the", "man", "worked", "as", "a"], ["a", "girl"], ["the", "boy", "said", "that", "w40", "woman", "w77"]]
STEPS = 8
ARCHS = ["gpt2", "llama"]
METHODS = ["equilm", "r_equilm"]
EXACT = 1e-10  # float64: the same numbers computed in another batch layout differ by ~1e-15


@functools.cache
def lm(arch: str):
    """The tiny random LM, with the group words' output embeddings scaled up so that generated text contains them:
    then "the output for g.x is g.(output for x)" also checks the way each copy's scores are mapped back."""
    model = tiny_lm(VOCAB, dtype=torch.float64, arch=arch)
    with torch.no_grad():
        model.get_output_embeddings().weight[[VOCABULARY[w] for w in GROUP_WORDS]] *= 3.0
    return model


def permutation(group: str):
    return GROUPS[group].bind(VOCABULARY)


def general_mask() -> torch.Tensor:
    mask = torch.zeros(VOCAB, dtype=torch.bool)
    mask[[VOCABULARY[w] for w in GENERAL]] = True
    return mask


def wrapper(arch: str, method: str, group: str = "order2") -> EquiLMForCausalLM:
    return EquiLMForCausalLM(lm(arch), permutation(group), method, general_mask() if method == "r_equilm" else None)


def left_padded(prompts=PROMPTS) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + [VOCABULARY[w] for w in p] for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def reference(arch, method, group, ids, mask, uniform, top_k, stop_ids=()):
    """The project's own decoder: same method and permutation, its own batching, cache and inverse-CDF sampling."""
    stop_mask = torch.zeros(VOCAB, dtype=torch.bool)
    stop_mask[list(stop_ids)] = True
    return project_generate(lm(arch), ids, mask, method, permutation(group), uniform, top_k=top_k,
                            stop_mask=stop_mask, pad_id=PAD, general_mask=general_mask(), return_log_probs=True)


def new_tokens(sequences: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """generate()'s new tokens, padded to STEPS (it stops early once every row has ended)."""
    new = sequences[:, ids.shape[1]:]
    return torch.cat([new, new.new_full((new.shape[0], STEPS - new.shape[1]), PAD)], dim=1)


def record_step_log_probs(model) -> tuple[list[torch.Tensor], object]:
    """The float64 log-probs the wrapper hands generate() at each step (generate itself keeps float32 copies)."""
    steps: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda module, args, output: steps.append(output.logits[:, -1].clone()))
    return steps, handle


# ------------------------------------------------------------------------------ generate() = project decoder
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generate_equals_the_project_decoder(arch, method, group, use_cache):
    model = wrapper(arch, method, group)
    ids, mask = left_padded()
    greedy = torch.zeros(len(PROMPTS), STEPS, dtype=torch.float64)  # top-1 ignores the uniform numbers
    # End of text: the token row 0 greedily produces at step 3, so that row stops early and the others may not.
    stop = int(reference(arch, method, group, ids, mask, greedy, top_k=1).tokens[0, 2])
    expected = reference(arch, method, group, ids, mask, greedy, top_k=1, stop_ids=[stop])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=False, use_cache=use_cache,
                         eos_token_id=stop, pad_token_id=PAD)
    assert torch.equal(new_tokens(out, ids), expected.tokens)
    assert int(expected.lengths[0]) <= 3  # the stop handling is exercised


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_top_k_samples_from_given_uniforms_equal_the_project_decoders(arch, method, use_cache):
    model = wrapper(arch, method, "order3")
    ids, mask = left_padded()
    uniform = torch.rand(len(PROMPTS), STEPS, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    expected = reference(arch, method, "order3", ids, mask, uniform, top_k=5)
    sampler = InverseCDFSampler(uniform, prompt_length=ids.shape[1], top_k=5)
    steps, handle = record_step_log_probs(model)
    try:
        out = model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=True, use_cache=use_cache,
                             eos_token_id=None, pad_token_id=PAD, logits_processor=LogitsProcessorList([sampler]))
    finally:
        handle.remove()
    assert torch.equal(new_tokens(out, ids), expected.tokens)
    # The distributions generate() sampled from are the decoder's, step by step.
    assert torch.allclose(torch.stack(steps, dim=1), expected.log_probs, atol=EXACT, rtol=0)
    # A different stream of numbers gives different samples: the numbers really drive generate().
    other_sampler = InverseCDFSampler(1 - uniform, prompt_length=ids.shape[1], top_k=5)
    other = model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=True, eos_token_id=None,
                           pad_token_id=PAD, logits_processor=[other_sampler])
    assert not torch.equal(new_tokens(other, ids), expected.tokens)


# --------------------------------------------------------------------------- step log-probs = teacher forcing
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_generate_steps_and_forward_equal_fairlm_teacher_forced_log_probs(arch, method):
    model = wrapper(arch, method, "order3")
    ids, mask = left_padded()
    teacher = FairLM(lm(arch), method, permutation("order3"), general_mask())
    steps, handle = record_step_log_probs(model)
    torch.manual_seed(5)
    try:  # generate()'s own top-k multinomial sampling, with the KV cache
        out = model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=True, top_k=20, use_cache=True,
                             eos_token_id=None, pad_token_id=PAD, return_dict_in_generate=True, output_logits=True)
    finally:
        handle.remove()
    full_mask = torch.cat([mask, torch.ones(len(PROMPTS), STEPS, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        expected = teacher(out.sequences, full_mask)[:, ids.shape[1] - 1:-1]
    assert torch.allclose(torch.stack(steps, dim=1), expected, atol=EXACT, rtol=0)
    # generate() saw these numbers (in float32) and drew every token from the 20 most likely.
    assert torch.equal(torch.stack(out.logits, dim=1), torch.stack(steps, dim=1).float())
    drawn = out.sequences[:, ids.shape[1]:]
    assert bool((expected.topk(20, dim=-1).indices == drawn.unsqueeze(-1)).any(-1).all())
    # The wrapper's own teacher-forced forward, at every real position of the left-padded batch.
    with torch.no_grad():
        forward = model(input_ids=out.sequences, attention_mask=full_mask).logits
        everything = teacher(out.sequences, full_mask)
    real = full_mask.bool()
    assert torch.allclose(forward[real], everything[real], atol=EXACT, rtol=0)
    # And step by step through forward() with the cache, positions from the attention mask alone (no generate()).
    width = ids.shape[1]
    with torch.no_grad():
        step = model(input_ids=ids, attention_mask=mask, use_cache=True)
        manual = [step.logits[:, -1]]
        for s in range(1, STEPS):
            step = model(input_ids=out.sequences[:, width + s - 1:width + s], attention_mask=full_mask[:, :width + s],
                         cache=step.cache, use_cache=True)
            manual.append(step.logits[:, -1])
    assert torch.allclose(torch.stack(manual, dim=1), expected, atol=EXACT, rtol=0)


# ------------------------------------------------------------------------------------------------- fairness
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("arch", ARCHS)
def test_equilm_output_for_a_moved_prompt_is_the_moved_output_and_the_bare_lm_is_not_fair(arch, group):
    model = wrapper(arch, "equilm", group)
    perm = permutation(group)
    ids, mask = left_padded()
    uniform = torch.rand(len(PROMPTS), STEPS, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def greedy(generator_model, prompt_ids):
        return new_tokens(generator_model.generate(prompt_ids, attention_mask=mask, max_new_tokens=STEPS,
                                                   do_sample=False, eos_token_id=None, pad_token_id=PAD), ids)

    def sampled(prompt_ids):  # the same numbers for a prompt and its image (common random numbers)
        sampler = InverseCDFSampler(uniform, prompt_length=ids.shape[1], top_k=8)
        return new_tokens(model.generate(prompt_ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=True,
                                         eos_token_id=None, pad_token_id=PAD, logits_processor=[sampler]), ids)

    fair, fair_samples, bare = greedy(model, ids), sampled(ids), greedy(lm(arch), ids)
    bare_images = []
    for g in perm.group:
        moved = perm.on_ids.apply(ids, g)
        assert torch.equal(greedy(model, moved), perm.on_ids.apply(fair, g)), perm.group.element_names[g]
        assert torch.equal(sampled(moved), perm.on_ids.apply(fair_samples, g)), perm.group.element_names[g]
        bare_images.append(torch.equal(greedy(lm(arch), moved), perm.on_ids.apply(bare, g)))
    # The outputs do contain group words, so being images of each other is not trivially true ...
    moved_words = perm.permutations[1:].ne(torch.arange(VOCAB)).any(0)
    assert bool(moved_words[fair].any()) and bool(moved_words[fair_samples].any())
    # ... and the bare LM (the negative control) fails it for every element but the identity.
    assert bare_images == [True] + [False] * (perm.group.order - 1)


@pytest.mark.parametrize("group", GROUPS)
def test_fairness_errors_are_round_off_for_equilm_and_not_for_r_equilm(group):
    ids, _ = left_padded([PROMPTS[0], ["a", "girl", "said", "that", "he"]])  # no padding: every position is real
    identity, *others = permutation(group).group.element_names
    equilm = wrapper("llama", "equilm", group).fairness_errors(ids)
    assert set(equilm) == {identity, *others}
    assert max(equilm.values()) < EXACT
    relaxed = wrapper("llama", "r_equilm", group).fairness_errors(ids)
    assert relaxed[identity] < EXACT  # the identity moves nothing
    assert min(relaxed[name] for name in others) > 1e-3  # the general words' scores follow the context


# ----------------------------------------------------------------------------------- other decoding settings
@pytest.mark.parametrize("arch", ARCHS)
def test_beam_search_and_static_cache_give_what_no_cache_gives(arch):
    """Beam search reorders the |G| cached copies of each beam together; a static cache holds |G|*B rows."""
    model = wrapper(arch, "r_equilm", "order3")
    ids, mask = left_padded()
    common = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=PAD)
    beams = dict(num_beams=3, num_return_sequences=2)
    assert torch.equal(model.generate(ids, **beams, **common), model.generate(ids, use_cache=False, **beams, **common))
    assert torch.equal(model.generate(ids, cache_implementation="static", **common),
                       model.generate(ids, use_cache=False, **common))


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_configurations_are_refused_with_what_is_allowed():
    model, perm = lm("gpt2"), permutation("order2")
    with pytest.raises(ConfigError, match=r"unknown method 'equizero'; allowed: equilm, r_equilm"):
        EquiLMForCausalLM(model, perm, "equizero")
    wider = GROUPS["order2"].bind(VOCABULARY, vocab_size=VOCAB + 20)
    with pytest.raises(ConfigError, match=rf"vocabulary of {VOCAB + 20} ids but the LM's logits have {VOCAB} entries"):
        EquiLMForCausalLM(model, wider)
    narrower = GROUPS["order2"].bind({w: i for w, i in VOCABULARY.items() if i < 100})
    with pytest.raises(ConfigError, match=rf"vocabulary of 100 ids .* vocab_size={VOCAB}"):
        EquiLMForCausalLM(model, narrower)
    with pytest.raises(TypeError, match="unbound WordCycles; bind it"):
        EquiLMForCausalLM(model, GROUPS["order2"])
    with pytest.raises(ConfigError, match="'r_equilm' needs general_mask"):
        EquiLMForCausalLM(model, perm, "r_equilm")
    with pytest.raises(ConfigError, match=rf"bool tensor of shape \({VOCAB},\)"):
        EquiLMForCausalLM(model, perm, "r_equilm", general_mask()[:10])
    with pytest.raises(ConfigError, match="only"):
        EquiLMForCausalLM(model, perm, "equilm", general_mask())
    with pytest.raises(TypeError, match="transformers causal LM"):
        EquiLMForCausalLM(torch.nn.Linear(2, 2), perm)


def test_bad_generate_calls_are_refused():
    model = wrapper("gpt2", "equilm")
    ids, mask = left_padded()
    uniform = torch.rand(len(PROMPTS), 2, dtype=torch.float64)
    too_few = InverseCDFSampler(uniform, prompt_length=ids.shape[1], top_k=5)
    with pytest.raises(ValueError, match="2 uniform numbers per row but generate\\(\\) asks for new token 3"):
        model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=True, logits_processor=[too_few])
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        InverseCDFSampler(torch.full((1, 2), 1.0), prompt_length=3)
    with pytest.raises(ValueError, match="acts on token ids"):
        model(inputs_embeds=torch.zeros(1, 2, 32, dtype=torch.float64))
