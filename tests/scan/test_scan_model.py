"""The equituned seq2seq, for both decoder arrangements: exact equivariance (float64), decoding equivariance,
batched == one-at-a-time, and the fused teacher-forced pass == the step-by-step one."""

from __future__ import annotations

import pytest
import torch

from equitune.core.checks import assert_equivariant, assert_not_equivariant
from equitune.core.wrappers import EquiTune
from equitune.scan.config import bind_scan_group
from equitune.scan.data import generate_split
from equitune.scan.decoding import decode_batched, equituned_decode, equizero_decode, exact_match, greedy_decode
from equitune.scan.model import Seq2Seq
from equitune.scan.training import encode_pairs, make_batch

GROUPS = {
    "jump_run": {"cycles": [["jump", "run"]], "output_cycles": [["JUMP", "RUN"]]},
    "left_right": {"cycles": [["left", "right"]], "output_cycles": [["TURN_LEFT", "TURN_RIGHT"]]},
    "verbs_4_cycle": {"cycles": [["walk", "look", "run", "jump"]], "output_cycles": [["WALK", "LOOK", "RUN", "JUMP"]]},
}
MAX_LENGTH = 24  # random-init models rarely stop: keep the tests short
# Decoder arrangement and encoder padding: the reference's (packed encoder), Luong's after-RNN attention with the
# packed encoder, and with every command padded to a fixed 9 tokens (the default profile's fast model).
ATTENTIONS = [pytest.param(("input_feeding", None), id="input_feeding"),
              pytest.param(("after_rnn", None), id="after_rnn"),
              pytest.param(("after_rnn", 9), id="after_rnn-fixed9")]


def _model(cell: str, seed: int = 0, dtype=torch.float64, attention=("input_feeding", None), layers: int = 1) -> Seq2Seq:
    torch.manual_seed(seed)
    kind, source_length = attention
    model = Seq2Seq(cell, 14, 9, hidden_size=16, layers=layers, dropout=0.1, attention=kind,
                    source_length=source_length)
    with torch.no_grad():
        model.output.bias[:2] -= 5.0  # a random model should not predict <pad> / <sos>: decoded actions test more
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def commands():
    # Commands of varied lengths that use every word of the groups above.
    pairs = [p for p in generate_split("around_right").train if len(p[0].split()) >= 2][::1997][:8]
    pairs += [("jump around right", "x"), ("walk left after run twice", "x"), ("look opposite right thrice", "x")]
    return encode_pairs([(c, "WALK") for c, _ in pairs])


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("group", list(GROUPS))
def test_equituned_log_probs_are_exactly_equivariant(attention, cell, group, commands):
    input_perm, output_perm = bind_scan_group(GROUPS[group])
    model = _model(cell, attention=attention)
    data = encode_pairs([(c, a) for c, a in generate_split("add_jump").train[:: 700]])
    src, decoder_inputs, _ = make_batch(data, torch.arange(len(data)))
    actions = (input_perm.on_ids, output_perm.on_ids)
    equituned = EquiTune(model, actions, output_action=output_perm.on_scores).eval()
    assert_equivariant(equituned, actions, (src, decoder_inputs), output_perm.on_scores)
    # The backbone alone is not equivariant: the check can fail.
    assert_not_equivariant(model, actions, (src, decoder_inputs), output_perm.on_scores)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("group", list(GROUPS))
def test_equituned_and_equizero_decoding_are_equivariant(attention, cell, group, commands):
    input_perm, output_perm = bind_scan_group(GROUPS[group])
    model = _model(cell, seed=1, attention=attention)
    src = commands.src
    # Greedy decoding is exactly equivariant on commands that no element g != e leaves unchanged. On a fixed
    # point (g.x = x) the averaged scores of a word and its image tie exactly, and argmax breaks the tie by index;
    # equizero's candidates tie the same way. So the check runs on the commands with a trivial stabiliser.
    moved_all = input_perm.on_ids.transform_all(src)
    free = torch.stack([~(moved_all[g] == src).all(dim=1) for g in input_perm.group if g != 0]).all(dim=0)
    assert int(free.sum()) >= 3
    src = src[free]
    for decode in (lambda s: equituned_decode(model, s, MAX_LENGTH, input_perm, output_perm),
                   lambda s: equizero_decode(model, s, MAX_LENGTH, input_perm, output_perm)):
        reference = decode(src)
        assert set(reference.unique().tolist()) - {0, 1, 2}, "decoder produced no actions: test would be vacuous"
        for g in input_perm.group:
            moved = decode(input_perm.on_ids.apply(src, g))
            assert torch.equal(moved, output_perm.on_ids.apply(reference, g)), f"element {g}"


def test_plain_decoding_is_not_equivariant_so_the_check_can_fail(commands):
    input_perm, output_perm = bind_scan_group(GROUPS["verbs_4_cycle"])
    model = _model("gru", seed=1)
    reference = greedy_decode(model, commands.src, MAX_LENGTH)
    moved = greedy_decode(model, input_perm.on_ids.apply(commands.src, 1), MAX_LENGTH)
    width = max(reference.shape[1], moved.shape[1])
    pad = torch.nn.functional.pad
    assert not torch.equal(pad(moved, (0, width - moved.shape[1])),
                           pad(output_perm.on_ids.apply(reference, 1), (0, width - reference.shape[1])))


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_equituned_decoder_agrees_with_the_wrapper(attention, cell, commands):
    """Greedy equituned decoding picks, at each step, the argmax of the EquiTune wrapper's averaged log-probs."""
    input_perm, output_perm = bind_scan_group(GROUPS["verbs_4_cycle"])
    model = _model(cell, seed=2, attention=attention)
    decoded = equituned_decode(model, commands.src, MAX_LENGTH, input_perm, output_perm)
    equituned = EquiTune(model, (input_perm.on_ids, output_perm.on_ids), output_action=output_perm.on_scores)
    decoder_inputs = torch.cat([torch.ones_like(decoded[:, :1]), decoded[:, :-1]], dim=1)
    decoder_inputs = decoder_inputs.masked_fill(decoder_inputs == 2, 0)  # nothing is fed after <eos>
    with torch.no_grad():
        averaged = equituned(commands.src, decoder_inputs)
    real = decoded != 0
    assert torch.equal(averaged.argmax(-1)[real], decoded[real])


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("cell, dtype", [("gru", torch.float64), ("gru", torch.float32), ("lstm", torch.float32)])
def test_batched_decoding_equals_one_at_a_time(attention, cell, dtype, commands):
    model = _model(cell, seed=3, dtype=dtype, attention=attention)
    for group in ("jump_run", "verbs_4_cycle"):
        perms = bind_scan_group(GROUPS[group])
        decoders = {
            "greedy": lambda s: greedy_decode(model, s, MAX_LENGTH),
            "equitune": lambda s, p=perms: equituned_decode(model, s, MAX_LENGTH, *p),
            "equizero": lambda s, p=perms: equizero_decode(model, s, MAX_LENGTH, *p, proxy="entropy"),
        }
        for name, decode in decoders.items():
            batched = decode_batched(decode, commands.src, batch_size=64)
            single = decode_batched(decode, commands.src, batch_size=1)
            assert any(len(row) > 3 for row in single), "decoder produced (almost) nothing: test would be vacuous"
            assert batched == single, (group, name)


@pytest.mark.parametrize("source_length", [None, 9])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_fused_teacher_forced_pass_equals_the_step_by_step_decoder(source_length, cell, layers):
    """after_rnn runs a teacher-forced sequence as one RNN call; decoding runs decode_step one step at a time.
    Both must compute the same log-probabilities (float64), padding included."""
    model = _model(cell, seed=5, attention=("after_rnn", source_length), layers=layers)
    data = encode_pairs(generate_split("add_jump").test[::400])
    src, decoder_inputs, _ = make_batch(data, torch.arange(len(data)))
    assert (decoder_inputs == 0).any(), "the batch should mix target lengths (padding after <eos>)"
    with torch.no_grad():
        fused = model(src, decoder_inputs)
        encoded = model.encode(src)
        hidden, steps = encoded.hidden, []
        for t in range(decoder_inputs.shape[1]):
            log_probs, hidden = model.decode_step(decoder_inputs[:, t], hidden, encoded)
            steps.append(log_probs)
        stepwise = torch.stack(steps, dim=1)
        # A teacher-forcing mask that is all True takes the fused path as well; one False row forces the loop.
        forced = model(src, decoder_inputs, torch.ones(len(data), dtype=torch.bool))
        mixed = torch.ones(len(data), dtype=torch.bool)
        mixed[0] = False
        looped = model(src, decoder_inputs, mixed)
    assert torch.allclose(fused, stepwise, atol=1e-12, rtol=0)
    assert torch.equal(fused, forced)
    assert torch.allclose(looped[1:], fused[1:], atol=1e-12, rtol=0)


def test_the_two_arrangements_are_different_models():
    feeding, after = _model("lstm", attention=("input_feeding", None)), _model("lstm", attention=("after_rnn", None))
    assert feeding.decoder.input_size == 32 and after.decoder.input_size == 16


def test_fixed_source_length_pads_and_refuses_longer_commands():
    model = _model("gru", attention=("after_rnn", 9))
    src = torch.tensor([[3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])  # more padding columns than 9: trimmed
    with torch.no_grad():
        encoded = model.encode(src)
        assert encoded.outputs.shape[1] == 9 and encoded.mask.sum() == 2
        assert torch.equal(model.encode(src[:, :2]).outputs, encoded.outputs)
    with pytest.raises(ValueError, match="longer than the model's source_length 9"):
        model.encode(torch.full((1, 10), 3))


def test_unknown_attention_or_cell_is_a_config_error():
    from equitune.core.errors import ConfigError

    with pytest.raises(ConfigError, match="input_feeding, after_rnn"):
        Seq2Seq("lstm", 14, 9, attention="bahdanau")
    with pytest.raises(ConfigError, match="rnn, gru, lstm"):
        Seq2Seq("transformer", 14, 9)
    with pytest.raises(ConfigError, match="source_length"):
        Seq2Seq("lstm", 14, 9, source_length=0)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_padding_does_not_change_log_probs(attention, commands):
    model = _model("lstm", seed=4, attention=attention)
    data = encode_pairs(generate_split("add_jump").test[::500])
    src, decoder_inputs, _ = make_batch(data, torch.arange(len(data)))
    with torch.no_grad():
        together = model(src, decoder_inputs)
        for row in range(len(data)):
            s = src[row:row + 1, : int((src[row] != 0).sum())]
            alone = model(s, decoder_inputs[row:row + 1])
            assert torch.allclose(together[row:row + 1], alone, atol=1e-10, rtol=0)


def test_exact_match_counts_whole_sequences():
    assert exact_match([[3, 4, 2], [3, 2]], [[3, 4, 2], [3, 4, 2]]) == 0.5
    with pytest.raises(ValueError):
        exact_match([[2]], [])



@pytest.mark.parametrize("schedule", ["constant", "cosine", "one_cycle"])
def test_pretrain_lr_schedule(schedule, monkeypatch):
    """Cosine: step s of S uses lr * (1 + cos(pi s / S)) / 2 (decaying towards 0); constant leaves lr alone;
    one_cycle warms up from lr/25 to lr, then anneals to lr/25000 by the last step."""
    import math

    from equitune.scan import training
    from equitune.scan.config import ScanPretrain
    from equitune.scan.data import input_vocabulary, output_vocabulary
    from equitune.scan.model import Seq2Seq

    pairs = [("jump", "JUMP"), ("walk twice", "WALK WALK"), ("run left", "TURN_LEFT RUN"), ("look", "LOOK")]
    data = training.encode_pairs(pairs)
    model = Seq2Seq("gru", len(input_vocabulary()), len(output_vocabulary()), 8, 1, 0.0)
    seen_lrs = []
    original_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen_lrs.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    examples = 80 if schedule == "one_cycle" else 8
    settings = ScanPretrain(examples=examples, batch_size=2, lr=0.01, teacher_forcing=0.5, grad_clip=5.0,
                            validate_every_examples=examples, lr_schedule=schedule)
    training.pretrain(model, data, lambda m: 0.0, settings, generator=torch.Generator().manual_seed(0))
    if schedule == "cosine":
        expected = [0.01 * (1 + math.cos(math.pi * s / 4)) / 2 for s in range(4)]
    elif schedule == "one_cycle":  # 40 steps, warm-up 10%: up for 3 steps, then down to lr / 25000 at the last
        peak = seen_lrs.index(max(seen_lrs))
        assert seen_lrs[0] == pytest.approx(0.01 / 25) and seen_lrs[peak] == pytest.approx(0.01) and peak == 3
        assert seen_lrs[:peak + 1] == sorted(seen_lrs[:peak + 1])
        assert seen_lrs[peak:] == sorted(seen_lrs[peak:], reverse=True)
        assert seen_lrs[-1] == pytest.approx(0.01 / 25000, rel=1e-6)
        return
    else:
        expected = [0.01] * 4
    assert seen_lrs == pytest.approx(expected, abs=1e-12)


def test_token_loss_weighting_counts_every_token_the_same():
    """batch_mean: a batch's mean token loss; token: the batch's token sum / (rows * mean length), so a long
    target's tokens count as much as a short one's, however the batch is composed."""
    from equitune.scan.training import sequence_loss

    torch.manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(3, 5, 9), dim=-1)
    targets = torch.tensor([[3, 4, 5, 6, 2], [3, 2, 0, 0, 0], [4, 2, 0, 0, 0]])
    picked = -log_probs.gather(2, targets.clamp(min=0).unsqueeze(2)).squeeze(2)[targets != 0]
    assert sequence_loss(log_probs, targets) == pytest.approx(float(picked.mean()))
    assert sequence_loss(log_probs, targets, "token", 3.0) == pytest.approx(float(picked.sum()) / (3 * 3.0))
    halves = [sequence_loss(log_probs[i:j], targets[i:j], "token", 3.0) * (j - i) / 3 for i, j in ((0, 1), (1, 3))]
    assert float(sum(halves)) == pytest.approx(float(sequence_loss(log_probs, targets, "token", 3.0)))
    with pytest.raises(ValueError, match="mean target length"):
        sequence_loss(log_probs, targets, "token")


def test_small_decodes_run_on_one_thread_and_restore_the_setting(commands):
    from equitune.scan import decoding

    seen = []
    model = _model("gru", seed=6)
    original = model.decode_step

    def recording_step(*args):
        seen.append(torch.get_num_threads())
        return original(*args)

    model.decode_step = recording_step
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        greedy_decode(model, commands.src[:2], 3)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
        with decoding.decoding_threads(decoding.SINGLE_THREAD_BELOW_ROWS) as threads:
            assert threads == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("group", ["jump_run", "verbs_4_cycle"])
def test_decodes_above_the_row_cap_run_in_parts_with_the_same_result(group, commands, monkeypatch):
    from equitune.scan import decoding

    input_perm, output_perm = bind_scan_group(GROUPS[group])
    model = _model("lstm", seed=7, attention=("after_rnn", 9))
    whole = {name: decode(commands.src) for name, decode in (
        ("greedy", lambda s: greedy_decode(model, s, MAX_LENGTH)),
        ("equitune", lambda s: equituned_decode(model, s, MAX_LENGTH, input_perm, output_perm)),
        ("equizero", lambda s: equizero_decode(model, s, MAX_LENGTH, input_perm, output_perm)))}
    calls = []
    original = decoding._decode_rows
    def recording(model, src, max_length, input_perm, *rest):
        calls.append(src.shape[0] * (1 if input_perm is None else input_perm.group.order))
        return original(model, src, max_length, input_perm, *rest)

    monkeypatch.setattr(decoding, "_decode_rows", recording)
    monkeypatch.setattr(decoding, "MAX_ROWS_PER_CALL", 8)
    assert torch.equal(greedy_decode(model, commands.src, MAX_LENGTH), whole["greedy"])
    assert torch.equal(equituned_decode(model, commands.src, MAX_LENGTH, input_perm, output_perm), whole["equitune"])
    assert torch.equal(equizero_decode(model, commands.src, MAX_LENGTH, input_perm, output_perm), whole["equizero"])
    assert max(calls) <= 8 and len(calls) >= 3 * 2  # every call within the cap; each decode in parts


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("cell, dtype", [("gru", torch.float64), ("lstm", torch.float32)])
def test_equizero_decodes_a_command_the_group_fixes_as_the_plain_model_in_any_batch(attention, cell, dtype,
                                                                                    commands):
    """A command without jump or run is fixed by the swap: both copies tie exactly, and the identity wins (the
    lowest group element), whatever rows share the batch; mapped back by the swap, the other copy would exchange
    JUMP and RUN in the answer."""
    model = _model(cell, seed=3, dtype=dtype, attention=attention)
    perms = bind_scan_group(GROUPS["jump_run"])
    copies = perms[0].on_ids.transform_all(commands.src)  # [|G|, B, L]
    fixed = [i for i in range(commands.src.shape[0]) if bool((copies[:, i] == copies[0, i]).all())]
    assert 0 < len(fixed) < commands.src.shape[0], fixed  # commands with and without jump or run
    greedy = decode_batched(lambda s: greedy_decode(model, s, MAX_LENGTH), commands.src, batch_size=1)
    for batch_size in (1, 4, 64):
        decoded = decode_batched(lambda s: equizero_decode(model, s, MAX_LENGTH, *perms, proxy="entropy"),
                                 commands.src, batch_size=batch_size)
        for i in fixed:
            assert decoded[i] == greedy[i], (batch_size, i)
