"""Issue 27 items 1 and 6, issue 22 item 2 for SCAN: equitune's combination rule (log_prob_mean | prob_mean),
frame decoding over a support frame, and the validation lines that copy training lines.

Exact equivariance in float64 for both decoder arrangements; right answers on hand cases (a stub model whose
per-copy distributions are chosen so that the two rules, and the frame, pick different tokens).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from equitune.core.checks import assert_equivariant, assert_not_equivariant
from equitune.scan import evaluation
from equitune.scan.combination import ProbMeanEquiTune, combine_copies, equitune_wrapper
from equitune.scan.config import bind_scan_group, scan_support_frame
from equitune.scan.data import input_vocabulary, output_vocabulary
from equitune.scan.decoding import equituned_decode, frame_decode, frame_mask
from equitune.scan.model import Seq2Seq
from equitune.scan.training import encode_pairs, lines_in, make_batch

GROUPS = {
    "jump_run": {"cycles": [["jump", "run"]], "output_cycles": [["JUMP", "RUN"]]},
    "left_right": {"cycles": [["left", "right"]], "output_cycles": [["TURN_LEFT", "TURN_RIGHT"]]},
    "verbs": {"cycles": [["walk", "look", "run", "jump"]], "output_cycles": [["WALK", "LOOK", "RUN", "JUMP"]]},
}
EXCLUDED = {"jump_run": ["jump"], "verbs": ["jump"], "left_right": ["right"]}  # the default params' rules
ATTENTIONS = [pytest.param(("input_feeding", None), id="input_feeding"),
              pytest.param(("after_rnn", 9), id="after_rnn-fixed9")]
MAX_LENGTH = 20
IN, OUT = input_vocabulary(), output_vocabulary()
# Commands with no group word, with one and with two (of the same or of different orbits of the three groups).
COMMANDS = ["turn left twice", "walk", "look opposite right", "jump twice", "run around left",
            "jump and run twice", "walk left after jump", "look around right and run", "jump right thrice",
            "turn right after walk opposite left", "run left and look right", "walk around right after jump left"]


def _model(cell: str = "gru", seed: int = 0, dtype=torch.float64, attention=("input_feeding", None)) -> Seq2Seq:
    torch.manual_seed(seed)
    kind, source_length = attention
    model = Seq2Seq(cell, len(IN), len(OUT), hidden_size=16, dropout=0.1, attention=kind,
                    source_length=source_length)
    with torch.no_grad():
        model.output.bias[:2] -= 5.0  # a random model should not predict <pad> / <sos>: decoded actions test more
    return model.to(dtype).eval()


def _src(commands: list[str]) -> torch.Tensor:
    return encode_pairs([(c, "WALK") for c in commands]).src


def _is_fixed(src: torch.Tensor, input_perm) -> torch.Tensor:
    """Commands that some element g != e leaves unchanged."""
    moved = input_perm.on_ids.transform_all(src)
    return torch.stack([(moved[g] == src).all(dim=1) for g in input_perm.group if g != 0]).any(dim=0)


def _moved_action_ids(output_perm) -> set[int]:
    permutations = output_perm.on_ids.permutations
    return {t for t in range(permutations.shape[1]) if bool((permutations[:, t] != t).any())}


def _assert_decoding_equivariant(decode, src, input_perm, output_perm, fixed) -> None:
    """decode(g.x) == g.decode(x) for every g. On a command some element fixes, the combined scores of an action
    and its image tie in exact arithmetic and argmax picks by index or rounding (equitune's known limit), so there
    the check covers the commands whose decoded actions the group leaves alone; the others must still decode the
    same in any batch."""
    reference = decode(src)
    assert set(reference.unique().tolist()) - {0, 1, 2}, "decoder produced no actions: test would be vacuous"
    moved_actions = _moved_action_ids(output_perm)
    untouched = torch.tensor([not (set(row.tolist()) & moved_actions) for row in reference])
    checked = ~fixed | untouched
    assert int((fixed & untouched).sum()) >= 1 and int((~fixed).sum()) >= 3, "the case must cover both kinds"
    for g in input_perm.group:
        moved = decode(input_perm.on_ids.apply(src, g))
        expected = output_perm.on_ids.apply(reference, g)
        assert torch.equal(moved[checked], expected[checked]), f"element {g}"
        assert torch.equal(moved[fixed & ~untouched], reference[fixed & ~untouched]), f"element {g}, fixed commands"


# --------------------------------------------------------------------------------------------- combination
def test_the_two_rules_pick_different_tokens_on_a_hand_case():
    """Two copies over (WALK, LOOK, EOS): probabilities (0.80, 0.19, 0.01) and (0.01, 0.30, 0.69). Their mean is
    (0.405, 0.245, 0.35): WALK; their geometric mean is proportional to (0.089, 0.239, 0.083): LOOK."""
    first, second = torch.tensor([0.80, 0.19, 0.01]), torch.tensor([0.01, 0.30, 0.69])
    stacked = torch.stack([first, second]).log().double().unsqueeze(1)  # [|G| = 2, B = 1, V = 3]
    prob_mean = combine_copies(stacked, "prob_mean")
    log_prob_mean = combine_copies(stacked, "log_prob_mean")
    torch.testing.assert_close(prob_mean.exp()[0], torch.tensor([0.405, 0.245, 0.35], dtype=torch.float64))
    torch.testing.assert_close(log_prob_mean.exp()[0], (first * second).sqrt().double())
    assert int(prob_mean.argmax()) == 0 and int(log_prob_mean.argmax()) == 1
    with pytest.raises(ValueError, match="log_prob_mean, prob_mean"):
        combine_copies(stacked, "max")


def test_a_mask_restricts_the_combination_and_an_all_true_mask_changes_nothing():
    stacked = torch.randn(4, 5, 7, dtype=torch.float64).log_softmax(-1)
    mask = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 0, 1, 0], [0, 0, 0, 1, 1], [1, 0, 0, 1, 0]], dtype=torch.bool)
    for rule in ("log_prob_mean", "prob_mean"):
        full = torch.ones(4, 5, dtype=torch.bool)
        assert torch.equal(combine_copies(stacked, rule, full), combine_copies(stacked, rule))
        masked = combine_copies(stacked, rule, mask)
        for b in range(5):
            expected = combine_copies(stacked[mask[:, b], b:b + 1], rule)[0]
            torch.testing.assert_close(masked[b], expected, rtol=0, atol=1e-15)


class _StubModel:
    """Decode steps whose log-probabilities depend only on the command's first word (one table per word), so each
    copy's distribution is chosen by hand. ``encode`` keeps that word as the "hidden state"."""

    def __init__(self, table: dict[str, dict[str, float]]):
        self.rows = torch.full((len(IN), len(OUT)), 1e-6, dtype=torch.float64)
        for word, probabilities in table.items():
            for action, p in probabilities.items():
                self.rows[IN.index(word), OUT.index(action)] = p
        self.rows = (self.rows / self.rows.sum(dim=1, keepdim=True)).log()

    def encode(self, src):
        return SimpleNamespace(hidden=src[:, 0])

    def decode_step(self, tokens, hidden, encoded):
        return self.rows[hidden], hidden


def _first_action(decoded: torch.Tensor) -> list[str]:
    return [OUT[int(t)] for t in decoded[:, 0]]


def test_equituned_decoding_uses_the_configured_rule_on_a_hand_case():
    """"jump" with jump<->run: copy e sees "jump" -> (WALK 0.80, LOOK 0.19, <eos> 0.01), copy swap sees "run" ->
    (0.01, 0.30, 0.69); WALK, LOOK and <eos> are not moved, so mapping back changes nothing: the mean of the
    probabilities picks WALK, the mean of the log-probabilities LOOK (as in the hand case above)."""
    stub = _StubModel({"jump": {"WALK": 0.80, "LOOK": 0.19, "<eos>": 0.01},
                       "run": {"WALK": 0.01, "LOOK": 0.30, "<eos>": 0.69}})
    perms = bind_scan_group(GROUPS["jump_run"])
    src = _src(["jump"])
    assert _first_action(equituned_decode(stub, src, 1, *perms, combination="prob_mean")) == ["WALK"]
    assert _first_action(equituned_decode(stub, src, 1, *perms)) == ["LOOK"]  # the default: log_prob_mean
    assert _first_action(equituned_decode(stub, src, 1, *perms, combination="log_prob_mean")) == ["LOOK"]


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("group", list(GROUPS))
def test_prob_mean_decoding_is_exactly_equivariant(attention, group):
    input_perm, output_perm = bind_scan_group(GROUPS[group])
    model = _model(seed=1, attention=attention)
    src = _src(COMMANDS)
    _assert_decoding_equivariant(lambda s: equituned_decode(model, s, MAX_LENGTH, input_perm, output_perm,
                                                            combination="prob_mean"),
                                 src, input_perm, output_perm, _is_fixed(src, input_perm))


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_prob_mean_training_output_is_exactly_equivariant_and_a_log_probability(attention):
    input_perm, output_perm = bind_scan_group(GROUPS["verbs"])
    model = _model("lstm", attention=attention)
    src, decoder_inputs, _ = make_batch(encode_pairs([(c, "WALK LOOK RUN") for c in COMMANDS]),
                                        torch.arange(len(COMMANDS)))
    actions = (input_perm.on_ids, output_perm.on_ids)
    wrapped = ProbMeanEquiTune(model, actions, output_action=output_perm.on_scores).eval()
    assert_equivariant(wrapped, actions, (src, decoder_inputs), output_perm.on_scores)
    assert_not_equivariant(model, actions, (src, decoder_inputs), output_perm.on_scores)
    with torch.no_grad():
        total = wrapped(src, decoder_inputs).exp().sum(dim=-1)
        copies = wrapped.group_outputs(src, decoder_inputs).exp().mean(dim=0)
    torch.testing.assert_close(total, torch.ones_like(total))  # a mixture of distributions is a distribution
    torch.testing.assert_close(wrapped(src, decoder_inputs).exp(), copies)
    assert equitune_wrapper("prob_mean") is ProbMeanEquiTune


# ---------------------------------------------------------------------------------------------------- frames
def test_support_frames_by_hand():
    """jump<->run with "jump" excluded: a command with "jump" only through the swap, one with "run" only as it is,
    one with neither through both (it is fixed), one with both through no element -> the whole group."""
    input_perm, _ = bind_scan_group(GROUPS["jump_run"])
    src = _src(["jump twice", "run left", "walk", "jump and run"])
    mask = frame_mask(scan_support_frame(["jump"], input_perm), src, input_perm)
    assert mask.T.tolist() == [[False, True], [True, False], [True, True], [True, True]]
    input_perm, _ = bind_scan_group(GROUPS["verbs"])  # 4-cycle walk -> look -> run -> jump -> walk
    mask = frame_mask(scan_support_frame(["jump"], input_perm), _src(["jump", "walk and jump"]), input_perm)
    # "jump": every element but e (which keeps jump); "walk and jump": g^3 sends walk to jump, e keeps jump.
    assert mask.T.tolist() == [[False, True, True, True], [False, True, True, False]]


def test_frame_decoding_decodes_the_frame_copies_and_maps_back_on_a_hand_case():
    """jump<->run, "jump" excluded. The stub's copy that sees "run" says RUN (0.9), "walk" says WALK (0.9), "jump"
    says LOOK (0.99). "jump": frame {swap}: the copy sees "run" -> RUN, mapped back -> JUMP. "run": frame {e} -> RUN.
    "walk": frame G, both copies see "walk" -> WALK. Equitune averages in the copy that sees "jump" for both "jump"
    and "run", whose confident LOOK outweighs the other copy: LOOK, LOOK."""
    stub = _StubModel({"run": {"RUN": 0.9}, "walk": {"WALK": 0.9}, "jump": {"LOOK": 0.99}})
    perms = bind_scan_group(GROUPS["jump_run"])
    frame = scan_support_frame(["jump"], perms[0])
    src = _src(["jump", "run", "walk"])
    assert _first_action(frame_decode(stub, src, 1, *perms, frame)) == ["JUMP", "RUN", "WALK"]
    assert _first_action(equituned_decode(stub, src, 1, *perms)) == ["LOOK", "LOOK", "WALK"]


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("combination", ["log_prob_mean", "prob_mean"])
def test_frame_decoding_over_the_whole_group_is_equituned_decoding(attention, dtype, combination):
    model = _model("lstm", seed=2, dtype=dtype, attention=attention)
    src = _src(COMMANDS)
    for group in GROUPS:
        perms = bind_scan_group(GROUPS[group])
        whole_group = lambda ids, order=perms[0].group.order: torch.ones(order, ids.shape[0], dtype=torch.bool)  # noqa: E731
        expected = equituned_decode(model, src, MAX_LENGTH, *perms, combination=combination)
        assert torch.equal(frame_decode(model, src, MAX_LENGTH, *perms, whole_group, combination), expected), group


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("combination", ["log_prob_mean", "prob_mean"])
def test_frame_decoding_is_exactly_equivariant(attention, group, combination):
    input_perm, output_perm = bind_scan_group(GROUPS[group])
    model = _model(seed=1, attention=attention)
    frame = scan_support_frame(EXCLUDED[group], input_perm)
    src = _src(COMMANDS)
    sizes = frame_mask(frame, src, input_perm).sum(dim=0)
    assert int((sizes < input_perm.group.order).sum()) >= 3  # most commands decode through part of the group
    _assert_decoding_equivariant(lambda s: frame_decode(model, s, MAX_LENGTH, input_perm, output_perm, frame,
                                                        combination),
                                 src, input_perm, output_perm, _is_fixed(src, input_perm))


def test_frame_decoding_is_not_plain_equitune_so_the_checks_can_fail():
    input_perm, output_perm = bind_scan_group(GROUPS["verbs"])
    model = _model(seed=1)
    src = _src(COMMANDS)
    frame = scan_support_frame(["jump"], input_perm)
    framed = frame_decode(model, src, MAX_LENGTH, input_perm, output_perm, frame)
    assert not torch.equal(framed, equituned_decode(model, src, MAX_LENGTH, input_perm, output_perm))


def test_a_frame_rule_without_any_allowed_word_of_an_orbit_is_refused():
    input_perm, _ = bind_scan_group(GROUPS["verbs"])
    with pytest.raises(ValueError, match="whole orbit"):
        scan_support_frame(["walk", "look", "run", "jump"], input_perm)
    with pytest.raises(ValueError, match="not SCAN command words"):
        scan_support_frame(["hop"], input_perm)


# ---------------------------------------------------------------------------------------- validation overlap
def test_validation_lines_in_training_on_a_hand_split(monkeypatch):
    train = encode_pairs([("jump", "JUMP"), ("walk", "WALK"), ("run twice", "RUN RUN"), ("jump", "JUMP")])
    validation = encode_pairs([("jump", "JUMP"), ("look", "LOOK"), ("jump", "JUMP"), ("walk left", "TURN_LEFT WALK"),
                               ("run twice", "RUN RUN")])
    assert lines_in(validation, train) == [True, False, True, False, True]
    # The same command with other actions is not a copy.
    assert lines_in(encode_pairs([("walk", "LOOK")]), train) == [False]
    flags = [True, False, True, True, True]  # right on every copy, and on one of the two unseen lines
    monkeypatch.setattr(evaluation, "correct_flags", lambda model, data, params, method, *rest: flags)
    overlap = evaluation.validation_overlap(None, {"train": train, "validation": validation}, None)
    assert overlap == {"lines": 5, "lines_in_training": 3, "accuracy": 0.8, "deduplicated_accuracy": 0.5}


def test_add_jump_validation_copies_are_the_bare_jump_lines():
    from equitune.scan.data import generate_split, hold_out_validation
    train, validation = hold_out_validation(generate_split("add_jump").train, 0.2, 0)
    copies = lines_in(encode_pairs(validation), encode_pairs(train))
    bare = [command == "jump" for command, _ in validation]
    assert copies == bare and 250 < sum(bare) < 340  # about 20% of the 1,467 bare "jump" lines


def test_prob_mean_is_numerically_a_mean_of_probabilities_with_a_frame():
    stacked = torch.tensor([[[math.log(0.5), math.log(0.5)]], [[math.log(0.9), math.log(0.1)]]],
                           dtype=torch.float64)
    only_second = torch.tensor([[False], [True]])
    torch.testing.assert_close(combine_copies(stacked, "prob_mean", only_second).exp(),
                               torch.tensor([[0.9, 0.1]], dtype=torch.float64))
    torch.testing.assert_close(combine_copies(stacked, "prob_mean").exp(),
                               torch.tensor([[0.7, 0.3]], dtype=torch.float64))
