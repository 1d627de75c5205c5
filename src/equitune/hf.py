"""EquiLM and R-EquiLM around any transformers causal LM, driven by transformers' own ``model.generate(...)``.

:class:`EquiLMForCausalLM` wraps a causal LM ``M`` and a word-cycle group bound to its vocabulary
(a :class:`~equitune.core.groups.VocabPermutation`). Its forward runs the |G| transformed contexts ``g . x`` as
one batch ``[|G|*B, T]`` through ``M`` (row ``g*B + b`` holds ``g . x_b``; the KV cache holds these |G|*B rows),
maps each row's next-token log-probabilities back by ``g^-1`` and combines them as
:func:`equitune.nlg.equilm.combine_group_log_probs` does:

- ``"equilm"``: ``log p(. | x) = log_softmax(1/|G| sum_g g^-1 . log_softmax(M(g . x)))``, so that
  ``p(g.y | g.x) = p(y | x)`` for every ``g`` (:meth:`EquiLMForCausalLM.fairness_errors` measures it);
- ``"r_equilm"``: the same, except the general words (he/she/...) keep the untransformed context's log-prob.

The combined log-probs are returned as the ``logits`` of ``B`` rows, so every decoding strategy of ``generate()``
(greedy, sampling, top-k/top-p, beam search) and the KV cache (dynamic or static) work unchanged: the wrapper is a
``PreTrainedModel`` + ``GenerationMixin`` with copies of the inner LM's config and generation config. Left padding
works: position ids come from the attention mask (the first real token gets position 0), as in
:mod:`equitune.nlg.backbone`.

:class:`InverseCDFSampler` is a logits processor that makes ``generate()`` draw top-k samples by inverse CDF
from caller-given uniform numbers, exactly like :func:`equitune.nlg.equilm.sample_top_k` in the project's own
decoder. With the same numbers for a prompt and its group image, EquiLM's samples are exact group images of
each other (common random numbers); ``torch.multinomial`` cannot promise that.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch.nn import functional as F
from transformers import GenerationMixin, LogitsProcessor, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .core.checks import equivariance_errors
from .core.errors import ConfigError
from .core.groups import VocabPermutation, WordCycles
from .nlg.backbone import cache_keyword, cache_of, lm_vocab_size
from .nlg.backbone import position_ids as positions_from_mask
from .nlg.equilm import combine_group_log_probs, sample_top_k

__all__ = ["METHODS", "EquiLMForCausalLM", "InverseCDFSampler"]

METHODS = ("equilm", "r_equilm")
"""The fair methods the wrapper offers (the base model is the inner LM itself: call its own ``generate``)."""


def _check_permutation(permutation, vocab_size: int) -> None:
    if isinstance(permutation, WordCycles):
        raise TypeError("permutation is an unbound WordCycles; bind it to the LM's vocabulary first: "
                        f"cycles.bind(word_to_id, vocab_size={vocab_size})")
    if not isinstance(permutation, VocabPermutation):
        raise TypeError(f"permutation must be a VocabPermutation (WordCycles(...).bind(...)); "
                        f"got {type(permutation).__name__}")
    bound = permutation.permutations.shape[1]
    if bound != vocab_size:
        raise ConfigError(f"permutation is bound to a vocabulary of {bound} ids but the LM's logits have {vocab_size} "
                          f"entries; bind it with the LM's size: cycles.bind(word_to_id, vocab_size={vocab_size})")


def _check_general_mask(method: str, general_mask: torch.Tensor | None, vocab_size: int) -> torch.Tensor | None:
    if method == "equilm":
        if general_mask is not None:
            raise ConfigError("general_mask is used by method 'r_equilm' only; for 'equilm' leave it None "
                              "(EquiLM averages every word)")
        return None
    if general_mask is None:
        raise ConfigError(f"method 'r_equilm' needs general_mask: a bool tensor [{vocab_size}] marking the general "
                          "words (he/she/...) whose log-probs come from the untransformed context")
    if not isinstance(general_mask, torch.Tensor) or general_mask.dtype != torch.bool \
            or tuple(general_mask.shape) != (vocab_size,):
        shape = tuple(general_mask.shape) if isinstance(general_mask, torch.Tensor) else type(general_mask).__name__
        dtype = f" {general_mask.dtype}" if isinstance(general_mask, torch.Tensor) else ""
        raise ConfigError(f"general_mask must be a bool tensor of shape ({vocab_size},) (one entry per logit); "
                          f"got{dtype} {shape}")
    return general_mask


class EquiLMForCausalLM(PreTrainedModel, GenerationMixin):
    """A causal LM made fair by group averaging, usable with ``generate()`` (see the module docstring).

    ``lm``: any transformers causal LM (its weights are shared, not copied); ``permutation``: a word-cycle group
    bound to ``lm``'s logits (``WordCycles(...).bind(word_to_id, vocab_size=...)``); ``method``: ``"equilm"`` or
    ``"r_equilm"``; ``general_mask``: for ``"r_equilm"`` only, a bool tensor ``[V]`` marking the general words.

    Beam search works too (the cache's |G| copies of each beam are reordered together). Attention weights and
    hidden states of the |G| copies are not returned.
    """

    # The wrapper computes no attention itself: whatever implementation the inner LM was built with is used.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, lm: PreTrainedModel, permutation: VocabPermutation, method: str = "equilm",
                 general_mask: torch.Tensor | None = None):
        if not isinstance(lm, PreTrainedModel) or lm.get_output_embeddings() is None:
            raise TypeError(f"lm must be a transformers causal LM (a PreTrainedModel with an output embedding, e.g. "
                            f"AutoModelForCausalLM.from_pretrained(...)); got {type(lm).__name__}")
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; allowed: {', '.join(METHODS)} "
                              "(for the base model call the LM's own generate)")
        vocab_size = lm_vocab_size(lm)
        _check_permutation(permutation, vocab_size)
        general_mask = _check_general_mask(method, general_mask, vocab_size)
        # A copy: PreTrainedModel.__init__ adjusts its config's attention settings, which the inner LM must keep.
        super().__init__(copy.deepcopy(lm.config))
        self.lm = lm
        self.permutation = permutation
        self.method = method
        self.register_buffer("general_mask", general_mask, persistent=False)
        if getattr(lm, "generation_config", None) is not None:
            self.generation_config = copy.deepcopy(lm.generation_config)  # the checkpoint's pad/eos/sampling defaults
        parameters = inspect.signature(lm.forward).parameters
        self._cache_keyword = cache_keyword(lm)
        self._lm_keeps_last_logits = "logits_to_keep" in parameters
        self.train(lm.training)

    @property
    def group_order(self) -> int:
        """|G|: how many transformed copies of each row the inner LM runs."""
        return self.permutation.group.order

    def get_input_embeddings(self):
        """The inner LM's token embedding (shared, not copied)."""
        return self.lm.get_input_embeddings()

    def get_output_embeddings(self):
        """The inner LM's output layer (its rows index the vocabulary the permutation acts on)."""
        return self.lm.get_output_embeddings()

    def _repeat_rows(self, value):
        """A batched tensor (mask, positions) repeated for every group element, group-major like the ids."""
        if value is None:
            return None
        if isinstance(value, dict):  # some models' generate() prepares one mask per layer type
            return {key: self._repeat_rows(v) for key, v in value.items()}
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"cannot repeat a {type(value).__name__} for the {self.group_order} group copies; "
                            "pass a 2D attention mask [B, L]")
        return value.repeat(self.group_order, *([1] * (value.dim() - 1)))

    def group_log_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        position_ids: torch.Tensor | None = None, cache=None, use_cache: bool | None = None,
                        logits_to_keep: int = 0, **kwargs) -> tuple[torch.Tensor, object]:
        """Mapped-back next-token log-probs of every copy ``[|G|, B, T, V]`` (row 0: the untransformed context,
        row g: ``g^-1 . log_softmax(M(g . x))``) and the inner LM's cache (|G|*B rows)."""
        order, batch, length = self.group_order, input_ids.shape[0], input_ids.shape[1]
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                position_ids = positions_from_mask(attention_mask)[:, -length:]
            else:
                past = cache.get_seq_length() if cache is not None else 0
                position_ids = torch.arange(past, past + length, device=input_ids.device).expand(batch, -1)
        transformed = self.permutation.on_ids.transform_all(input_ids).reshape(order * batch, length)
        keep = {"logits_to_keep": logits_to_keep} if self._lm_keeps_last_logits else {}
        output = self.lm(input_ids=transformed, attention_mask=self._repeat_rows(attention_mask),
                         position_ids=self._repeat_rows(position_ids), use_cache=use_cache,
                         **{self._cache_keyword: cache}, **keep, **kwargs)
        logits = output.logits
        if not self._lm_keeps_last_logits and logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        log_probs = F.log_softmax(logits, dim=-1)
        rows = self.permutation.on_scores.untransform_all(log_probs.reshape(order, batch, *log_probs.shape[1:]))
        # Without a cache asked for, the output may have none (and older outputs name it differently).
        new_cache = cache_of(output) if use_cache or cache is not None else None
        return rows, new_cache

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache=None, use_cache: bool | None = None,
                logits_to_keep: int = 0, inputs_embeds: torch.Tensor | None = None, labels=None,
                return_dict: bool | None = True, **kwargs):
        """The method's next-token log-probs ``[B, T, V]`` as ``logits`` (``T`` = ``logits_to_keep`` when set), and
        the cache of the |G|*B inner rows. ``attention_mask`` spans the cached and the new tokens, as in any causal
        LM; without ``position_ids`` they come from it (left padding). Other keyword arguments reach the inner LM."""
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("EquiLMForCausalLM acts on token ids (the group permutes them): pass input_ids, "
                             "not inputs_embeds")
        if labels is not None:
            raise ValueError("labels are not supported; score sequences with next_token_log_probs "
                             "(or equitune.nlg.equilm.FairLM)")
        rows, cache = self.group_log_probs(input_ids, attention_mask, position_ids, cache, use_cache, logits_to_keep,
                                           **kwargs)
        output = CausalLMOutputWithPast(logits=combine_group_log_probs(rows, self.method, self.general_mask),
                                        cache=cache)
        return output if return_dict is not False else output.to_tuple()

    def _reorder_cache(self, cache, beam_idx: torch.Tensor):
        """Beam search: beam ``i`` continues beam ``beam_idx[i]``, and so do its |G| copies in the inner cache."""
        rows = beam_idx.shape[0]
        offsets = torch.arange(self.group_order, device=beam_idx.device).repeat_interleave(rows) * rows
        cache.reorder_cache(beam_idx.repeat(self.group_order) + offsets)
        return cache

    @torch.no_grad()
    def next_token_log_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                             ) -> torch.Tensor:
        """Teacher-forced next-token log-probs ``[B, T, V]`` of the method (no cache)."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return self(input_ids=input_ids, attention_mask=mask, use_cache=False).logits

    def fairness_errors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                        ) -> dict[str, float]:
        """``max |log p(g.y | g.x) - log p(y | x)|`` over every position and next token ``y``, per group element.

        For EquiLM every value is round-off (the fairness identity); for R-EquiLM the general words follow the
        context, so elements that move the context give larger values. Measured element by element by the
        project's checker :func:`equitune.core.checks.equivariance_errors`; on left-padded input, compare the
        real positions yourself (padded positions' outputs are not meaningful)."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return equivariance_errors(self.next_token_log_probs, (self.permutation.on_ids, None), (input_ids, mask),
                                   self.permutation.on_scores)


class InverseCDFSampler(LogitsProcessor):
    """Make ``generate()`` draw each token by top-k inverse CDF from given uniform numbers.

    ``uniform``: ``[rows, steps]`` numbers in [0, 1), row ``i``'s step-``s`` token uses ``uniform[i, s]``;
    ``prompt_length``: the width of the (padded) ``input_ids`` given to ``generate()``, which tells the step;
    ``top_k``: how many of the most likely tokens to draw from (None: all). The processor replaces the scores by a
    one-hot choice (0 for the drawn token, -inf elsewhere), so greedy decoding and ``do_sample=True`` both return
    it; with ``do_sample=True`` it is run before generate's own warpers (temperature, top-k, top-p), which then
    have nothing left to change: give the temperature/top-k here instead. The draw is
    :func:`equitune.nlg.equilm.sample_top_k` on the scores ``generate()`` passes (which it casts to float32).
    """

    def __init__(self, uniform: torch.Tensor, *, prompt_length: int, top_k: int | None = None):
        if not isinstance(uniform, torch.Tensor) or uniform.dim() != 2 or not uniform.is_floating_point():
            raise ValueError("uniform must be a float tensor [rows, steps] of numbers in [0, 1); got "
                             f"{tuple(uniform.shape) if isinstance(uniform, torch.Tensor) else type(uniform).__name__}")
        if uniform.numel() and (float(uniform.min()) < 0 or float(uniform.max()) >= 1):
            raise ValueError(f"uniform numbers must lie in [0, 1); got the range [{float(uniform.min())}, "
                             f"{float(uniform.max())}]")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive number of tokens or None (all); got {top_k}")
        self.uniform = uniform
        self.top_k = top_k
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_length
        rows, steps = self.uniform.shape
        if input_ids.shape[0] != rows:
            raise ValueError(f"InverseCDFSampler has uniform numbers for {rows} rows but generate() decodes "
                             f"{input_ids.shape[0]} (num_beams/num_return_sequences multiply the rows)")
        if not 0 <= step < steps:
            raise ValueError(f"InverseCDFSampler has {steps} uniform numbers per row but generate() asks for new token "
                             f"{step + 1} (prompt_length={self.prompt_length}); give at least max_new_tokens numbers "
                             "and the padded prompt width as prompt_length")
        uniform = self.uniform[:, step].to(scores.device)
        tokens = sample_top_k(scores, self.top_k or scores.shape[-1], uniform)
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter(1, tokens.unsqueeze(1), 0.0)
