"""The seq2seq model of the SCAN experiment: a bidirectional encoder and an attention decoder.

The recurrent layer (``rnn``): ``rnn`` (tanh), ``gru`` or ``lstm``. The encoder's two directions are summed, so
encoder outputs and the decoder state share one size ``hidden_size``. The decoder's attention masks padding. The
encoder reads commands either as packed sequences (``source_length=None``, the reference: each command its own
length; torch runs packed sequences step by step) or right-padded to a fixed ``source_length`` (one fused RNN call;
the padding positions are part of the model's input, always the same number for a command). Either way a padded
batch gives the same numbers as one example at a time.

Two decoder arrangements (``attention``, the param ``scan.model.attention``):

- ``input_feeding`` (the reference's): at each step the previous decoder state attends over the encoder outputs
  and the context is fed into the RNN together with the previous token. Step ``t`` needs step ``t-1``'s state
  before its input exists, so training is a Python loop over the target's steps.
- ``after_rnn`` (Luong et al.'s): the RNN reads only the previous tokens and the context is computed from its
  output. With teacher forcing every input is known in advance, so the whole target sequence is one fused RNN
  call followed by one batched attention: training runs without a loop over steps.

Both read out ``log_softmax(W [rnn output; context])``. ``forward(src, decoder_inputs)`` is the teacher-forced
(or partly teacher-forced) pass returning per-step log-probabilities ``[N, T, V]``; it takes only token-id
tensors, so the core ``EquiTune`` wrapper can act on both inputs with vocabulary permutations and on the output
with the permutation of the scores. ``encode`` and ``decode_step`` are the pieces greedy decoding uses; for both
arrangements ``decode_step`` computes exactly what ``forward`` computes at that step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..core.errors import ConfigError

__all__ = ["ATTENTION_KINDS", "Attention", "RNNS", "Encoded", "Seq2Seq", "PAD_ID"]

PAD_ID = 0
RNNS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
Attention = Literal["input_feeding", "after_rnn"]
ATTENTION_KINDS: tuple[str, ...] = ("input_feeding", "after_rnn")

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class Encoded:
    outputs: torch.Tensor  # [N, S, H], zero at padding
    mask: torch.Tensor  # [N, S] True at real tokens
    hidden: Hidden  # initial decoder state [layers, N, H] (a pair for LSTM)


def _sum_directions(hidden: torch.Tensor, layers: int) -> torch.Tensor:
    # [layers * 2, N, H] -> [layers, N, H]: forward + backward final states of each layer.
    return hidden.view(layers, 2, *hidden.shape[1:]).sum(dim=1)


class Seq2Seq(nn.Module):
    def __init__(self, rnn: str, input_vocab_size: int, output_vocab_size: int, hidden_size: int = 64,
                 layers: int = 1, dropout: float = 0.1, attention: str = "input_feeding",
                 source_length: int | None = None):
        super().__init__()
        if rnn not in RNNS:
            raise ConfigError(f"unknown rnn {rnn!r}; allowed: {', '.join(RNNS)}")
        if attention not in ATTENTION_KINDS:
            raise ConfigError(f"unknown attention arrangement {attention!r}; allowed: {', '.join(ATTENTION_KINDS)}")
        if source_length is not None and source_length < 1:
            raise ConfigError(f"source_length must be None (packed sequences) or >= 1; got {source_length}")
        self.rnn, self.layers, self.hidden_size, self.attention = rnn, layers, hidden_size, attention
        self.source_length = source_length
        layer = RNNS[rnn]
        between_layers = dropout if layers > 1 else 0.0
        decoder_input = 2 * hidden_size if attention == "input_feeding" else hidden_size
        self.source_embedding = nn.Embedding(input_vocab_size, hidden_size, padding_idx=PAD_ID)
        self.target_embedding = nn.Embedding(output_vocab_size, hidden_size, padding_idx=PAD_ID)
        self.encoder = layer(hidden_size, hidden_size, layers, batch_first=True, bidirectional=True, dropout=between_layers)
        self.decoder = layer(decoder_input, hidden_size, layers, batch_first=True, dropout=between_layers)
        self.attention_query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.output = nn.Linear(2 * hidden_size, output_vocab_size)
        self.dropout = nn.Dropout(dropout)

    # ------------------------------------------------------------------------------------------- encoder
    def encode(self, src: torch.Tensor) -> Encoded:
        mask = src != PAD_ID
        lengths = mask.sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("every command needs at least one token (found an all-padding row)")
        if self.source_length is None:
            packed = pack_padded_sequence(self.dropout(self.source_embedding(src)), lengths.cpu(), batch_first=True,
                                          enforce_sorted=False)
            outputs, hidden = self.encoder(packed)
            outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.shape[1])
        else:
            longest = int(lengths.max())
            if longest > self.source_length:
                raise ValueError(f"a command of {longest} tokens is longer than the model's source_length "
                                 f"{self.source_length}")
            # Trailing all-padding columns beyond the fixed length carry nothing; the rest is padded up to it.
            src = F.pad(src[:, : self.source_length], (0, self.source_length - min(src.shape[1], self.source_length)),
                        value=PAD_ID)
            mask = src != PAD_ID
            outputs, hidden = self.encoder(self.dropout(self.source_embedding(src)))
        outputs = outputs[..., : self.hidden_size] + outputs[..., self.hidden_size:]
        if self.rnn == "lstm":
            hidden = (_sum_directions(hidden[0], self.layers), _sum_directions(hidden[1], self.layers))
        else:
            hidden = _sum_directions(hidden, self.layers)
        return Encoded(outputs, mask, hidden)

    # ------------------------------------------------------------------------------------------- decoder
    def attend(self, queries: torch.Tensor, encoded: Encoded) -> torch.Tensor:
        """Contexts ``[N, T, H]`` for queries ``[N, T, H]``: attention over the real (unpadded) encoder outputs."""
        scores = torch.bmm(self.attention_query(queries), encoded.outputs.transpose(1, 2))  # [N, T, S]
        weights = F.softmax(scores.masked_fill(~encoded.mask.unsqueeze(1), float("-inf")), dim=-1)
        return torch.bmm(weights, encoded.outputs)

    def readout(self, outputs: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.output(torch.cat([outputs, contexts], dim=-1)), dim=-1)

    def decode_step(self, tokens: torch.Tensor, hidden: Hidden, encoded: Encoded) -> tuple[torch.Tensor, Hidden]:
        """One step for a batch of previous tokens ``[N]``: log-probabilities ``[N, V]`` and the new state."""
        embedded = self.dropout(self.target_embedding(tokens)).unsqueeze(1)  # [N, 1, H]
        if self.attention == "input_feeding":
            top = (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]  # [N, H]
            context = self.attend(top.unsqueeze(1), encoded)
            output, hidden = self.decoder(torch.cat([embedded, context], dim=2), hidden)
        else:
            output, hidden = self.decoder(embedded, hidden)
            context = self.attend(output, encoded)
        return self.readout(output, context).squeeze(1), hidden

    def forward(self, src: torch.Tensor, decoder_inputs: torch.Tensor,
                teacher_forcing: torch.Tensor | None = None) -> torch.Tensor:
        """Per-step log-probabilities ``[N, T, V]`` for decoder inputs ``[N, T]`` (``<sos> y1 ... y_{T-1}``).

        ``teacher_forcing`` (bool ``[N]``, optional): rows that are False feed back their own previous argmax
        instead of the gold input (the reference's teacher-forcing ratio, decided once per sequence).
        """
        encoded = self.encode(src)
        fully_forced = teacher_forcing is None or bool(teacher_forcing.all())
        if self.attention == "after_rnn" and fully_forced:
            # Every input is known: one fused RNN call over the whole sequence, then attention for all steps.
            outputs, _ = self.decoder(self.dropout(self.target_embedding(decoder_inputs)), encoded.hidden)
            return self.readout(outputs, self.attend(outputs, encoded))
        hidden = encoded.hidden
        steps = []
        previous = decoder_inputs[:, 0]
        for t in range(decoder_inputs.shape[1]):
            gold = decoder_inputs[:, t]
            tokens = gold if fully_forced or t == 0 else torch.where(teacher_forcing, gold, previous)
            log_probs, hidden = self.decode_step(tokens, hidden, encoded)
            steps.append(log_probs)
            previous = log_probs.argmax(dim=-1)
        return torch.stack(steps, dim=1)
