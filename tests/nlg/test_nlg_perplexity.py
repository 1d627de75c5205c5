"""The perplexity's memory-light group average equals FairLM's teacher-forced log-probabilities at every target,
for every method, on windows with and without the axis's words (orders 2 and 3, with general words)."""

from __future__ import annotations

import pytest
import torch

from equitune.core.groups import WordCycles
from equitune.nlg.backbone import CausalLM
from equitune.nlg.canon import CanonicalFrame, CanonLM
from equitune.nlg.equilm import FairLM
from equitune.nlg.perplexity import AxisGroup, ScoredText, score_windows
from helpers.nlg_tiny import tiny_lm

VOCAB = 40
CYCLES = {"order2": [[5, 6], [7, 8]], "order3": [[5, 6, 7], [8, 9, 10]]}
GENERAL = [11, 12]


@pytest.mark.parametrize("cycles", ["order2", "order3"])
def test_scored_log_probs_equal_fairlm_at_the_targets(cycles):
    backbone = CausalLM(tiny_lm(VOCAB, dtype=torch.float64))
    permutation = WordCycles([[str(i) for i in c] for c in CYCLES[cycles]]).bind({str(i): i for i in range(VOCAB)})
    general = torch.zeros(VOCAB, dtype=torch.bool)
    general[GENERAL] = True
    equality = torch.zeros(VOCAB, dtype=torch.bool)
    equality[[t for c in CYCLES[cycles] for t in c]] = True
    windows = torch.randint(11, 30, (5, 9), generator=torch.Generator().manual_seed(0))
    windows[0, 3], windows[1, 0], windows[3, 8] = 5, 8, 6  # windows 2 and 4 hold no equality word
    windows[1, 4] = CYCLES[cycles][0][1]  # window 1: a canonical word first, then another
    scored = ScoredText(windows, [("t", i) for i in range(5)], {"a": list(range(5))})
    frame = CanonicalFrame.of_cycles(permutation, CYCLES[cycles])
    group = AxisGroup(permutation, general, equality, frame)
    methods = ["base", "equilm", "r_equilm", "canonlm"]
    totals = score_windows(backbone, scored, {"a": group}, methods, batch_size=2, device="cpu", progress=lambda _: None,
                           other_average=True)
    targets = windows[:, 1:]
    is_equality = equality[targets]
    for method in methods:
        for average, suffix in (("log_probs", ()), ("probs", ("probs",))):
            if method == "base" and suffix:
                assert ("a", "base", "all", "probs") not in totals  # no group average: one number
                continue
            model = (CanonLM(backbone, frame, average) if method == "canonlm"
                     else FairLM(backbone, method, permutation, general, average))
            with torch.no_grad():
                log_probs = model(windows)[:, :-1]
            expected = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            nll, count = totals[("a", method, "all", *suffix)]
            assert count == targets.numel() and nll == pytest.approx(float(expected.sum()), abs=1e-9)
            nll, count = totals[("a", method, "equality", *suffix)]
            assert count == int(is_equality.sum()) > 0
            assert nll == pytest.approx(float(expected[is_equality].sum()), abs=1e-9)
    # The two averaging rules give different numbers here (the check of the second is not vacuous).
    assert totals[("a", "equilm", "all", "probs")][0] != pytest.approx(totals[("a", "equilm", "all")][0], abs=1e-3)
    assert totals[("a", "canonlm", "all")][0] != pytest.approx(totals[("a", "equilm", "all")][0], abs=1e-3)
    # The methods really differ here (the comparison above is not vacuous).
    assert totals[("a", "equilm", "all")][0] != pytest.approx(totals[("a", "base", "all")][0], abs=1e-3)
    assert totals[("a", "r_equilm", "all")][0] != pytest.approx(totals[("a", "equilm", "all")][0], abs=1e-6)


def test_a_text_without_an_axis_equality_words_is_refused_before_scoring():
    """Perplexity over an axis's equality tokens is undefined when none occurs: a clear error naming the axis and
    what to change, not a NaN that fails the metrics write after all the scoring."""
    from equitune.core.errors import DataError
    from equitune.nlg.perplexity import evaluate_perplexity

    words = {"equality_sets": [["a", "b"]], "equality_cycles": [[{"id": 3, "text": " a"}, {"id": 4, "text": " b"}]],
             "general": [], "neutral": [], "skipped_forms": []}
    prompts = {"axes": {"toy": {"words": words, "prompts": []}}, "pad_id": 0}
    scored = ScoredText(torch.tensor([[5, 6, 7, 8], [6, 7, 8, 9]]), [("t", 0), ("t", 1)], {"toy": [0, 1]})
    nlg = type("Nlg", (), {"perplexity": type("P", (), {"batch_size": 1})(), "methods": ["base", "equilm"]})()
    with pytest.raises(DataError, match="axis 'toy'.*equality words"):
        evaluate_perplexity(tiny_lm(VOCAB), scored, {"source": "wikitext"}, prompts, nlg, "cpu")
