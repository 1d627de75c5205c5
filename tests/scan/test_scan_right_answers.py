"""Right answers for the SCAN experiment (issue 26, item 7): the model pieces against their formulas and hand
numbers (an attention step, decoder steps, the encoder's two directions, teacher forcing per row), the losses
with padding, the split and the protocol (the checkpoint is selected on validation alone, ties to the earlier
one, and the test split is measured on the selected weights)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from torch.nn import functional as F

from equitune.scan import evaluation, experiment
from equitune.scan.cells import ScanCell, TuneCell
from equitune.scan.config import ScanParams
from equitune.scan.data import hold_out_validation
from equitune.scan.decoding import EOS_ID, decode_batched, exact_match
from equitune.scan.model import Encoded, Seq2Seq
from equitune.scan.training import EncodedPairs, global_batch_denominator, sequence_loss
from helpers.paths import ROOT


def _model(cell: str, attention: str, hidden: int = 3, vocab: int = 6, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(cell, vocab, vocab, hidden_size=hidden, dropout=0.0, attention=attention).double().eval()


# --------------------------------------------------------------------------------------------- attention
def test_attention_step_on_hand_numbers():
    model = _model("gru", "after_rnn", hidden=2)
    with torch.no_grad():
        model.attention_query.weight.copy_(torch.eye(2, dtype=torch.float64))
    outputs = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]], dtype=torch.float64)  # third position: padding
    encoded = Encoded(outputs, torch.tensor([[True, True, False]]), None)
    query = torch.tensor([[[2.0, 0.0]]], dtype=torch.float64)
    # scores q.k = [2, 0, (masked)] -> weights e^2/(e^2+1), 1/(e^2+1) -> context = weights . [(1,0), (0,1)]
    w0 = math.exp(2) / (math.exp(2) + 1)
    context = model.attend(query, encoded)
    assert torch.allclose(context, torch.tensor([[[w0, 1 - w0]]], dtype=torch.float64), atol=1e-15)


# ------------------------------------------------------------------------------------------ decoder steps
def _attend_by_hand(model: Seq2Seq, query: torch.Tensor, outputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    keys = outputs[0][mask[0]]  # [S_real, H]
    scores = keys @ (model.attention_query.weight @ query)
    return torch.softmax(scores, dim=0) @ keys


def _readout_by_hand(model: Seq2Seq, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    size = model.hidden_size
    weight, bias = model.output.weight, model.output.bias
    return F.log_softmax(weight[:, :size] @ h + weight[:, size:] @ context + bias, dim=-1)


def _encoded(model: Seq2Seq) -> Encoded:
    src = torch.tensor([[3, 4, 5, 0]])  # one command of three words and one padding position
    return model.encode(src)


def test_after_rnn_decoder_step_is_the_formula():
    model = _model("rnn", "after_rnn")
    encoded = _encoded(model)
    token = torch.tensor([2])
    with torch.no_grad():
        log_probs, hidden = model.decode_step(token, encoded.hidden, encoded)
        rnn = model.decoder
        e = model.target_embedding.weight[2]
        h0 = encoded.hidden[0, 0]
        h = torch.tanh(rnn.weight_ih_l0 @ e + rnn.bias_ih_l0 + rnn.weight_hh_l0 @ h0 + rnn.bias_hh_l0)
        context = _attend_by_hand(model, h, encoded.outputs, encoded.mask)
        expected = _readout_by_hand(model, h, context)
    assert torch.allclose(hidden[0, 0], h, atol=1e-14)
    assert torch.allclose(log_probs[0], expected, atol=1e-14)


def test_lstm_input_feeding_step_attends_with_the_hidden_state_and_feeds_the_context():
    model = _model("lstm", "input_feeding")
    encoded = _encoded(model)
    token = torch.tensor([1])
    with torch.no_grad():
        log_probs, (h_new, c_new) = model.decode_step(token, encoded.hidden, encoded)
        lstm = model.decoder
        h0, c0 = encoded.hidden[0][0, 0], encoded.hidden[1][0, 0]
        context = _attend_by_hand(model, h0, encoded.outputs, encoded.mask)  # the previous *hidden* state asks
        x = torch.cat([model.target_embedding.weight[1], context])
        gates = lstm.weight_ih_l0 @ x + lstm.bias_ih_l0 + lstm.weight_hh_l0 @ h0 + lstm.bias_hh_l0
        i, f, g, o = gates.chunk(4)
        c = torch.sigmoid(f) * c0 + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        expected = _readout_by_hand(model, h, context)
    assert torch.allclose(c_new[0, 0], c, atol=1e-14) and torch.allclose(h_new[0, 0], h, atol=1e-14)
    assert torch.allclose(log_probs[0], expected, atol=1e-14)


@pytest.mark.parametrize("source_length", [None, 6])
def test_encoder_sums_the_forward_and_the_backward_direction(source_length):
    torch.manual_seed(0)
    model = Seq2Seq("rnn", 6, 6, hidden_size=3, dropout=0.0, attention="after_rnn",
                    source_length=source_length).double().eval()
    src = torch.tensor([[3, 4, 5, 0]])
    with torch.no_grad():
        encoded = model.encode(src)
        rnn, emb = model.encoder, model.source_embedding.weight
        words = [emb[t] for t in (3, 4, 5)]

        def run(ws, suffix):
            w_ih, w_hh = getattr(rnn, f"weight_ih_l0{suffix}"), getattr(rnn, f"weight_hh_l0{suffix}")
            b = getattr(rnn, f"bias_ih_l0{suffix}") + getattr(rnn, f"bias_hh_l0{suffix}")
            h, states = torch.zeros(3, dtype=torch.float64), []
            for w in ws:
                h = torch.tanh(w_ih @ w + w_hh @ h + b)
                states.append(h)
            return states

        forward = run(words, "")
        if source_length is None:  # packed: the backward direction starts at the last real word
            backward = run(words[::-1], "_reverse")[::-1]
        else:  # fixed length: the padding positions are part of the input, read first by the backward direction
            padded = words + [emb[0]] * (source_length - 3)
            backward = run(padded[::-1], "_reverse")[::-1][:3]
    for t in range(3):
        assert torch.allclose(encoded.outputs[0, t], forward[t] + backward[t], atol=1e-14), t
    if source_length is None:
        assert torch.all(encoded.outputs[0, 3] == 0)
        assert torch.allclose(encoded.hidden[0, 0], forward[-1] + backward[0], atol=1e-14)


def test_teacher_forcing_is_decided_per_row():
    model = _model("gru", "input_feeding", hidden=4, vocab=9)
    src = torch.tensor([[3, 4, 5], [6, 7, 8]])
    decoder_inputs = torch.tensor([[1, 3, 4, 5, 6], [1, 3, 4, 5, 6]])
    with torch.no_grad():
        mixed = model(src, decoder_inputs, torch.tensor([True, False]))
        forced = model(src, decoder_inputs)
        # row 1 runs free: each step is fed the previous step's argmax
        encoded = model.encode(src[1:])
        hidden, token, free = encoded.hidden, torch.tensor([1]), []
        for _ in range(decoder_inputs.shape[1]):
            log_probs, hidden = model.decode_step(token, hidden, encoded)
            free.append(log_probs[0])
            token = log_probs.argmax(dim=-1)
    assert torch.allclose(mixed[0], forced[0], atol=1e-14)
    assert torch.allclose(mixed[1], torch.stack(free), atol=1e-14)
    fed = [int(step.argmax()) for step in free[:-1]]
    assert fed != decoder_inputs[1, 1:].tolist(), "the free-running row must differ from the gold inputs to test this"


# ------------------------------------------------------------------------------------------------- losses
def _log_probs() -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.tensor([[[0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]],
                          [[0.3, 0.3, 0.4], [0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]], dtype=torch.float64)
    targets = torch.tensor([[1, 2, 0], [2, 0, 0]])  # 0 is padding: 3 real tokens
    return probs.log(), targets


def test_sequence_loss_counts_real_tokens_only():
    log_probs, targets = _log_probs()
    real = -(math.log(0.5) + math.log(0.8) + math.log(0.4))
    assert sequence_loss(log_probs, targets, "batch_mean").item() == pytest.approx(real / 3, abs=1e-14)
    # token weighting: the batch's summed loss over (batch size x the training set's mean target length)
    assert sequence_loss(log_probs, targets, "token", mean_target_length=2.5).item() == pytest.approx(
        real / (2 * 2.5), abs=1e-14)


def test_global_batch_denominators_by_hand():
    targets = torch.tensor([[4, 5, 2, 0], [4, 2, 0, 0], [5, 5, 5, 2]])
    data = EncodedPairs(torch.ones(3, 2, dtype=torch.long), targets, ())
    index = torch.tensor([0, 2])
    assert global_batch_denominator(data, index, "batch_mean", 3.0) == 7.0  # 3 + 4 real tokens
    assert global_batch_denominator(data, index, "token", 3.0) == 6.0


def test_validation_is_held_out_of_the_training_lines():
    train = [(f"cmd{i}", f"ACT{i}") for i in range(10)]
    kept, held = hold_out_validation(train, 0.2, seed=0)
    assert len(kept) == 8 and len(held) == 2
    assert not set(kept) & set(held) and sorted(kept + held) == sorted(train)


def test_decoded_rows_keep_their_eos_and_exact_match_counts_every_target():
    rows = torch.tensor([[4, 5, EOS_ID, 0], [6, 6, 6, 6]])
    got = decode_batched(lambda src: rows[: src.shape[0]], torch.tensor([[3, 0], [3, 4]]), batch_size=2)
    assert got == [[4, 5, EOS_ID], [6, 6, 6, 6]]
    assert exact_match([[4, 5, 2], [6, 2], [7, 2]], [[4, 5, 2], [6, 6, 2], [7, 2]]) == pytest.approx(2 / 3)
    assert exact_match([[4, 2]], [[4, 2]]) == 1.0


# ------------------------------------------------------------------------------------------------ protocol
def _tiny_params() -> ScanParams:
    scan = yaml.safe_load((ROOT / "params.yaml").read_text())["scan"]
    scan["model"].update(hidden_size=4)
    scan["pretrain"].update(examples=8, batch_size=2, validate_every_examples=2, lr_schedule="constant")
    scan["tune"].update(steps={"add_jump": 2, "around_right": 2}, batch_size=2, curve_steps=[0, 2])
    return ScanParams.model_validate(scan)


def _tiny_data() -> dict[str, EncodedPairs]:
    from equitune.scan.data import generate_split
    from equitune.scan.training import encode_pairs
    pairs = list(generate_split("add_jump").test[::1500])
    return {part: encode_pairs(pairs) for part in ("train", "validation", "test")}  # three distinct objects


def test_pretraining_selects_on_validation_only_keeps_the_earlier_tie_and_tests_the_selected_weights(monkeypatch):
    params, data = _tiny_params(), _tiny_data()
    calls = []

    def fake_accuracy(model, split, params, method, perms=None):
        # Poisoned: the test split scores higher than anything validation ever gives, so reading it would show.
        name = next(k for k, v in data.items() if v is split)
        calls.append((name, {k: v.clone() for k, v in model.state_dict().items()}))
        return {"validation": 0.25, "test": 0.75, "train": 0.5}[name]

    monkeypatch.setattr(experiment, "accuracy", fake_accuracy)
    checkpoint, metrics = experiment.pretrain_cell(params, ScanCell("add_jump", "gru", 0), data,
                                                   torch.Generator().manual_seed(0), torch.device("cpu"),
                                                   lambda values, step: None)
    names = [name for name, _ in calls]
    assert names == ["validation"] * 4 + ["test"], names  # 4 validations (every 2 of 8 examples), then the test
    assert [h["validation_accuracy"] for h in metrics["history"]] == [0.25] * 4
    assert metrics["validation_accuracy"] == 0.25 and metrics["test_accuracy"] == 0.75
    # every validation ties: the earliest checkpoint is kept, and the test split is measured on it
    assert metrics["best_at_examples"] == 2
    first_validation, tested = calls[0][1], calls[-1][1]
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(value, first_validation[key]), key
        assert torch.equal(tested[key], value), key
    assert any(not torch.equal(calls[0][1][k], calls[3][1][k]) for k in first_validation), "weights must change"


def test_tuned_models_report_validation_from_the_validation_split(monkeypatch):
    params, data = _tiny_params(), _tiny_data()

    def fake_accuracy(model, split, params, method, perms=None, combination=None, frame=None):
        name = next(k for k, v in data.items() if v is split)
        return {"validation": 0.25, "test": 0.75, "train": 0.5}[name]

    for module in (experiment, evaluation):  # the cell's own evaluations and the evaluation-only additions
        monkeypatch.setattr(module, "accuracy", fake_accuracy)
    torch.manual_seed(0)
    model = experiment.build_model(params, "gru").eval()
    metrics = experiment.tune_cell(params, TuneCell("add_jump", "jump_run", "gru", 0), data, model,
                                   lambda: torch.Generator().manual_seed(0), torch.device("cpu"),
                                   lambda values, step: None)
    found = 0
    for value in metrics.values():
        if isinstance(value, dict) and "validation_accuracy" in value:
            assert value["validation_accuracy"] == 0.25 and value["test_accuracy"] == 0.75
            found += 1
    assert found >= 2


# ------------------------------------------------------------------------------------------ equizero decoding
def _equizero_by_the_rule(model, src, max_length, input_perm, output_perm):
    """The documented rule, one copy at a time: copy g decodes g . src greedily on its own; its score is the mean of
    -max log-prob over its steps up to and including its <eos>; the lowest score wins (lowest g on ties); the
    winner's sequence is mapped back by g^-1."""
    from equitune.scan.decoding import SOS_ID, greedy_decode
    group = input_perm.group
    sequences, scores = [], []
    for g in group:
        moved = input_perm.on_ids.apply(src, g)
        seq = greedy_decode(model, moved, max_length)
        inputs = torch.cat([torch.full_like(seq[:, :1], SOS_ID), seq[:, :-1]], dim=1)
        with torch.no_grad():
            per_step = -model(moved, inputs).amax(dim=-1)  # [B, L]
        row_scores = []
        for b in range(src.shape[0]):
            row = seq[b].tolist()
            steps = row.index(EOS_ID) + 1 if EOS_ID in row else len(row)
            row_scores.append(float(per_step[b, :steps].mean()))
        sequences.append(output_perm.on_ids.apply(seq, group.inverse(g)))
        scores.append(row_scores)
    result = []
    for b in range(src.shape[0]):
        column = [scores[g][b] for g in group]
        best = column.index(min(column))
        result.append([t for t in sequences[best][b].tolist() if t != 0])
    return result, scores


def test_equizero_decoding_follows_the_documented_rule():
    from equitune.core.groups import WordCycles
    from equitune.scan.data import input_vocabulary, output_vocabulary
    from equitune.scan.decoding import equizero_decode
    cycles = WordCycles([["walk", "look", "run", "jump"]], [["WALK", "LOOK", "RUN", "JUMP"]])
    input_perm, output_perm = cycles.bind(input_vocabulary()), cycles.bind_output(output_vocabulary())
    torch.manual_seed(3)
    model = Seq2Seq("gru", len(input_vocabulary()), len(output_vocabulary()), hidden_size=8, dropout=0.0,
                    attention="input_feeding").double().eval()
    words = {w: i for i, w in enumerate(input_vocabulary())}
    commands = ["jump twice", "walk left", "run around right thrice", "look opposite left and jump", "turn left",
                "walk after run twice", "jump around left", "look thrice and walk right"]
    rows = [[words[w] for w in c.split()] for c in commands]
    src = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        src[i, : len(r)] = torch.tensor(r)
    expected, scores = _equizero_by_the_rule(model, src, 10, input_perm, output_perm)
    got = [[t for t in row if t != 0] for row in equizero_decode(model, src, 10, input_perm, output_perm).tolist()]
    assert got == expected
    # the case must exercise the rule: the copies' decodings differ (so the choice matters), they stop at different
    # steps (so the <eos> mask matters) and the winner is not always the same element
    from equitune.scan.decoding import greedy_decode
    copies = [output_perm.on_ids.apply(greedy_decode(model, input_perm.on_ids.apply(src, g), 10), g2).tolist()
              for g, g2 in ((g, input_perm.group.inverse(g)) for g in input_perm.group)]
    assert sum(len({str(c[b]) for c in copies}) > 1 for b in range(len(commands))) >= 5
    lengths = [{c[b].index(EOS_ID) if EOS_ID in c[b] else 10 for c in copies} for b in range(len(commands))]
    assert sum(len(s) > 1 for s in lengths) >= 3
    winners = {min(range(4), key=lambda g, b=b: scores[g][b]) for b in range(len(commands))}
    assert len(winners) > 1
