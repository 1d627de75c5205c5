"""Equizero's sequence score stops at each copy's own <eos>: a deterministic, scripted decoder.

One command, ``jump``, under the group jump <-> run: copy e reads ``jump``, copy g reads ``run``. The scripted
decoder makes copy e stop at once and very sure (<eos> with probability 0.99), and copy g say RUN three times and
stop, moderately sure (0.6 per step). After its <eos> a copy's scores are uniform (maximally unsure): they must not
count. Counted only up to <eos>, copy e is the more confident (score -log 0.99 against -log 0.6) and equizero
answers ``<eos>``; counting the uniform steps after copy e's <eos> would make copy g win and the answer
``JUMP JUMP JUMP <eos>`` (copy g's sequence mapped back by g^-1).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from equitune.scan.config import bind_scan_group
from equitune.scan.data import input_vocabulary, output_vocabulary
from equitune.scan.decoding import EOS_ID, equizero_decode

WORDS, ACTIONS = input_vocabulary(), output_vocabulary()
JUMP, RUN = WORDS.index("jump"), WORDS.index("run")
RUN_ACTION, JUMP_ACTION = ACTIONS.index("RUN"), ACTIONS.index("JUMP")


class ScriptedDecoder:
    """``encode``/``decode_step`` as the decoders call them; the state is (the command's word, the step)."""

    def encode(self, src: torch.Tensor):
        return SimpleNamespace(hidden=(src[:, 0].clone(), torch.zeros(len(src), dtype=torch.long)))

    def decode_step(self, tokens: torch.Tensor, hidden, encoded):
        word, step = hidden
        rows = []
        for w, s in zip(word.tolist(), step.tolist(), strict=True):
            if w == JUMP and s == 0:
                rows.append(self._sure_of(EOS_ID, 0.99))
            elif w == RUN and s < 3:
                rows.append(self._sure_of(RUN_ACTION, 0.6))
            elif w == RUN and s == 3:
                rows.append(self._sure_of(EOS_ID, 0.6))
            else:  # after this copy's <eos>: padding, maximally unsure
                rows.append(torch.full((len(ACTIONS),), 1.0 / len(ACTIONS)))
        return torch.stack(rows).log(), (word, step + 1)

    @staticmethod
    def _sure_of(token: int, probability: float) -> torch.Tensor:
        probs = torch.full((len(ACTIONS),), (1 - probability) / (len(ACTIONS) - 1))
        probs[token] = probability
        return probs


def test_equizero_scores_each_copy_only_up_to_its_own_eos():
    input_perm, output_perm = bind_scan_group({"cycles": [["jump", "run"]], "output_cycles": [["JUMP", "RUN"]]})
    src = torch.tensor([[JUMP]])
    chosen = equizero_decode(ScriptedDecoder(), src, 10, input_perm, output_perm, proxy="max_log_prob")
    # Both copies decode 4 steps (until copy g's <eos>); copy e's last 3 are after its <eos>.
    assert chosen[0, 0].item() == EOS_ID, f"equizero chose {chosen.tolist()}: it counted steps after <eos>"
    # The scripted scores make the counted-everything alternative the other copy, so the test can fail:
    after = (-math.log(0.99) + 3 * math.log(len(ACTIONS))) / 4
    assert after > -math.log(0.6) > -math.log(0.99)
