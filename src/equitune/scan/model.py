"""The seq2seq model of the SCAN experiment: a bidirectional encoder and an attention decoder.

Cells: ``rnn`` (tanh), ``gru`` or ``lstm``. The encoder's two directions are summed, so encoder outputs and the
decoder state share one size ``hidden_size``. Padding (id 0) is handled with packed sequences in the encoder and
an attention mask in the decoder, so a padded batch gives the same numbers as one example at a time.

``forward(src, decoder_inputs)`` is the teacher-forced (or partly teacher-forced) pass returning per-step
log-probabilities ``[N, T, V]``; it takes only token-id tensors, so the core ``EquiTune`` wrapper can act on both
inputs with vocabulary permutations and on the output with the permutation of the scores.
``encode`` and ``decode_step`` are the pieces greedy decoding uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = ["CELLS", "Encoded", "Seq2Seq", "PAD_ID"]

PAD_ID = 0
CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}

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
    def __init__(self, cell: str, input_vocab_size: int, output_vocab_size: int, hidden_size: int = 64,
                 layers: int = 1, dropout: float = 0.1):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; allowed: {', '.join(CELLS)}")
        self.cell, self.layers, self.hidden_size = cell, layers, hidden_size
        rnn = CELLS[cell]
        between_layers = dropout if layers > 1 else 0.0
        self.source_embedding = nn.Embedding(input_vocab_size, hidden_size, padding_idx=PAD_ID)
        self.target_embedding = nn.Embedding(output_vocab_size, hidden_size, padding_idx=PAD_ID)
        self.encoder = rnn(hidden_size, hidden_size, layers, batch_first=True, bidirectional=True, dropout=between_layers)
        self.decoder = rnn(2 * hidden_size, hidden_size, layers, batch_first=True, dropout=between_layers)
        self.attention_query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.output = nn.Linear(2 * hidden_size, output_vocab_size)
        self.dropout = nn.Dropout(dropout)

    # ------------------------------------------------------------------------------------------- encoder
    def encode(self, src: torch.Tensor) -> Encoded:
        mask = src != PAD_ID
        lengths = mask.sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("every command needs at least one token (found an all-padding row)")
        packed = pack_padded_sequence(self.dropout(self.source_embedding(src)), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        outputs, hidden = self.encoder(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.shape[1])
        outputs = outputs[..., : self.hidden_size] + outputs[..., self.hidden_size:]
        if self.cell == "lstm":
            hidden = (_sum_directions(hidden[0], self.layers), _sum_directions(hidden[1], self.layers))
        else:
            hidden = _sum_directions(hidden, self.layers)
        return Encoded(outputs, mask, hidden)

    # ------------------------------------------------------------------------------------------- decoder
    def decode_step(self, tokens: torch.Tensor, hidden: Hidden, encoded: Encoded) -> tuple[torch.Tensor, Hidden]:
        """One step for a batch of previous tokens ``[N]``: log-probabilities ``[N, V]`` and the new state."""
        top = (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]  # [N, H]
        scores = torch.bmm(encoded.outputs, self.attention_query(top).unsqueeze(2)).squeeze(2)
        weights = F.softmax(scores.masked_fill(~encoded.mask, float("-inf")), dim=1)
        context = torch.bmm(weights.unsqueeze(1), encoded.outputs).squeeze(1)
        step_input = torch.cat([self.dropout(self.target_embedding(tokens)), context], dim=1).unsqueeze(1)
        output, hidden = self.decoder(step_input, hidden)
        logits = self.output(torch.cat([output.squeeze(1), context], dim=1))
        return F.log_softmax(logits, dim=-1), hidden

    def forward(self, src: torch.Tensor, decoder_inputs: torch.Tensor,
                teacher_forcing: torch.Tensor | None = None) -> torch.Tensor:
        """Per-step log-probabilities ``[N, T, V]`` for decoder inputs ``[N, T]`` (``<sos> y1 ... y_{T-1}``).

        ``teacher_forcing`` (bool ``[N]``, optional): rows that are False feed back their own previous argmax
        instead of the gold input (the reference's teacher-forcing ratio, decided once per sequence).
        """
        encoded = self.encode(src)
        hidden = encoded.hidden
        steps = []
        previous = decoder_inputs[:, 0]
        for t in range(decoder_inputs.shape[1]):
            gold = decoder_inputs[:, t]
            tokens = gold if teacher_forcing is None or t == 0 else torch.where(teacher_forcing, gold, previous)
            log_probs, hidden = self.decode_step(tokens, hidden, encoded)
            steps.append(log_probs)
            previous = log_probs.argmax(dim=-1)
        return torch.stack(steps, dim=1)
