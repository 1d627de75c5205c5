"""Issue 22 item 2: the SCAN ``frame`` method tuned through its own frame.

- The frame-tuned model is exactly equivariant (float64, teacher-forced per-step log-probabilities) for jump<->run
  (order 2), a 3-cycle and the verb 4-cycle, on commands whose frame is one element, the whole group (no group
  word) and empty (no element qualifies: the whole group too), for both combination rules; the bare backbone and a
  frame rule that breaks ties by index are not (so the check can fail).
- A tuning step runs only the frame's copies through the model (counted rows, right answer by hand) and changes
  the parameters.
- Seed discipline: frame tuning draws equitune's batches, and adding it leaves every equitune and equizero number
  of a cell as it was.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from equitune.core.checks import assert_equivariant, assert_not_equivariant
from equitune.core.frames import FrameAverage
from equitune.scan import experiment, training
from equitune.scan.cells import TuneCell
from equitune.scan.combination import ProbMeanFrameAverage, equitune_wrapper, frame_wrapper
from equitune.scan.config import ScanParams, bind_scan_group, scan_support_frame
from equitune.scan.data import generate_split, input_vocabulary, output_vocabulary
from equitune.scan.decoding import frame_mask
from equitune.scan.model import Seq2Seq
from equitune.scan.training import encode_pairs, make_batch, tune
from helpers.paths import ROOT

# Group, the words its frame rule excludes, and commands with a frame of one element ("one"), with no group word
# (fixed by every element: the whole group, "all") and with no element that qualifies ("empty": the whole group).
CASES = {
    "jump_run": ({"cycles": [["jump", "run"]], "output_cycles": [["JUMP", "RUN"]]}, ["jump"],
                 {"one": ["jump twice", "run left after walk", "look around right and jump"],
                  "all": ["walk", "turn left and look right"], "empty": ["jump and run twice"]}),
    "walk_look_run": ({"cycles": [["walk", "look", "run"]], "output_cycles": [["WALK", "LOOK", "RUN"]]},
                      ["look", "run"],
                      {"one": ["walk twice", "look left", "run around right thrice"],
                       "all": ["jump", "turn right thrice"], "empty": ["walk and look", "run after look opposite left"]}),
    "verbs": ({"cycles": [["walk", "look", "run", "jump"]], "output_cycles": [["WALK", "LOOK", "RUN", "JUMP"]]},
              ["run", "jump"],
              {"one": ["walk and look twice", "run and jump", "look after run"],
               "all": ["turn around left"], "empty": ["walk after run", "look and jump right"]}),
}


def _params(batch_size: int = 4, steps: int = 2) -> ScanParams:
    scan = yaml.safe_load((ROOT / "params.yaml").read_text())["scan"]
    scan["model"].update(hidden_size=8)
    scan["tune"].update(steps={"add_jump": steps, "around_right": steps}, batch_size=batch_size,
                        curve_steps=sorted({0, 1, steps}), bucket_batches=1)
    scan["evaluation"].update(max_output_length=49)
    return ScanParams.model_validate(scan)


def _model(seed: int = 0, dtype=torch.float64) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq("lstm", len(input_vocabulary()), len(output_vocabulary()), hidden_size=16, dropout=0.1,
                   attention="after_rnn", source_length=9).to(dtype)


def _pairs(commands: list[str]) -> list[tuple[str, str]]:
    """Each command with a target that holds every action the groups move (the output action has work to do)."""
    return [(c, "WALK LOOK RUN JUMP TURN_LEFT TURN_RIGHT") for c in commands]


def _frame_tuned(group: str, combination: str):
    """A float64 model tuned for two steps through the group's frame; the wrapper in eval mode, the batch."""
    spec, excluded, commands = CASES[group]
    input_perm, output_perm = bind_scan_group(spec)
    frame = scan_support_frame(excluded, input_perm)
    everything = [c for kind in ("one", "all", "empty") for c in commands[kind]]
    data = encode_pairs(_pairs(everything))
    model = _model()
    actions = (input_perm.on_ids, output_perm.on_ids)
    wrapper = frame_wrapper(combination)(model, actions, frame, output_action=output_perm.on_scores)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    tune(wrapper, data, _params().tune, lr=1e-2, steps=2, checkpoints=[], generator=torch.Generator().manual_seed(0),
         on_checkpoint=lambda step: None)
    assert any(not torch.equal(before[key], value) for key, value in model.state_dict().items()), "no training"
    src, decoder_inputs, _ = make_batch(data, torch.arange(len(data)))
    return wrapper.eval(), model, actions, output_perm, (src, decoder_inputs), frame, input_perm, commands


@pytest.mark.parametrize("combination", ["log_prob_mean", "prob_mean"])
@pytest.mark.parametrize("group", list(CASES))
def test_the_frame_tuned_model_is_exactly_equivariant(group, combination):
    wrapper, model, actions, output_perm, inputs, frame, input_perm, commands = _frame_tuned(group, combination)
    # The batch covers the three kinds of frame: one element, the whole group (fixed), and empty (whole group).
    sizes = frame_mask(frame, inputs[0], input_perm).sum(dim=0).tolist()
    raw = frame(inputs[0]).sum(dim=0).tolist()
    order = input_perm.group.order
    kinds = [kind for kind in ("one", "all", "empty") for _ in commands[kind]]
    assert [s for s, k in zip(sizes, kinds, strict=True) if k == "one"] == [1] * len(commands["one"])
    assert all(s == order for s, k in zip(sizes, kinds, strict=True) if k != "one")
    assert all(r == 0 for r, k in zip(raw, kinds, strict=True) if k == "empty")  # really empty before the fallback
    assert all(r == order for r, k in zip(raw, kinds, strict=True) if k == "all")
    assert_equivariant(wrapper, actions, inputs, output_perm.on_scores)
    # Controls: the tuned backbone itself, and the same frame with ties broken by index, are not equivariant.
    assert_not_equivariant(model.eval(), actions, inputs, output_perm.on_scores)

    def first_of_frame(ids, *rest):
        mask = frame_mask(frame, ids, input_perm)
        return torch.nn.functional.one_hot(mask.to(torch.long).argmax(dim=0), order).T.bool()

    tie_broken = frame_wrapper(combination)(model, actions, first_of_frame, output_action=output_perm.on_scores)
    assert_not_equivariant(tie_broken.eval(), actions, inputs, output_perm.on_scores)


def test_frame_wrapper_classes_and_prob_mean_is_a_mixture_of_the_frame_copies():
    assert frame_wrapper("log_prob_mean") is FrameAverage and frame_wrapper("prob_mean") is ProbMeanFrameAverage
    with pytest.raises(ValueError, match="log_prob_mean, prob_mean"):
        frame_wrapper("max")
    wrapper, _, _, _, inputs, _, _, _ = _frame_tuned("verbs", "prob_mean")
    with torch.no_grad():
        mask = wrapper.frame_mask(*inputs)
        copies = wrapper.outputs_in_frame(mask, *inputs).exp() * mask.reshape(*mask.shape, 1, 1)
        expected = copies.sum(dim=0) / mask.sum(dim=0).reshape(-1, 1, 1)
        assert not torch.equal(mask, torch.ones_like(mask))  # a frame smaller than the group somewhere
        torch.testing.assert_close(wrapper(*inputs).exp(), expected, rtol=1e-12, atol=1e-14)


def test_a_frame_tuning_step_runs_only_the_frame_copies_and_changes_the_parameters():
    """jump<->run, "jump" excluded: "run" and "run and walk" go through e only, "jump" through the swap only,
    "walk" (fixed) and "jump and run" (empty frame) through both: 1 + 1 + 1 + 2 + 2 = 7 rows, where equitune runs
    2 x 5 = 10."""
    spec, excluded, _ = CASES["jump_run"]
    input_perm, output_perm = bind_scan_group(spec)
    data = encode_pairs(_pairs(["run", "run and walk", "jump", "walk", "jump and run"]))
    model = _model(dtype=torch.float32)
    rows: list[int] = []
    model.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    actions = (input_perm.on_ids, output_perm.on_ids)
    frame = scan_support_frame(excluded, input_perm)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    wrapper = frame_wrapper("log_prob_mean")(model, actions, frame, output_action=output_perm.on_scores)
    tune(wrapper, data, _params(batch_size=5, steps=1).tune, lr=1e-2, steps=1, checkpoints=[],
         generator=torch.Generator().manual_seed(0), on_checkpoint=lambda step: None)
    assert rows == [7]
    changed = [key for key, value in model.state_dict().items() if not torch.equal(before[key], value)]
    assert "source_embedding.weight" in changed and "output.weight" in changed
    # The same step through equitune runs every copy: the count above is the frame's doing.
    rows.clear()
    tune(equitune_wrapper("log_prob_mean")(model, actions, output_action=output_perm.on_scores), data,
         _params(batch_size=5, steps=1).tune, lr=1e-2, steps=1, checkpoints=[],
         generator=torch.Generator().manual_seed(0), on_checkpoint=lambda step: None)
    assert rows == [10]


def _tiny_cell(monkeypatch, stub_frame: bool) -> tuple[dict, list[list[list[int]]], list[int], dict]:
    """tune_cell on a few commands: its metrics, the index batches each tuning drew, the rows of every training
    forward pass (a hook that the methods' copies of the model inherit), the data; optionally without real frame
    tuning."""
    drawn: list[list[list[int]]] = []
    original = training.batch_order

    def recording(*args, **kwargs):
        batches: list[list[int]] = []
        drawn.append(batches)
        for index in original(*args, **kwargs):
            batches.append(index.tolist())
            yield index

    monkeypatch.setattr(training, "batch_order", recording)
    if stub_frame:
        monkeypatch.setattr(experiment, "tune_through_frame", lambda *args, **kwargs: {
            "frame": {}, "frame_cost": {}, "validation_curve": {}})
    params = _params(batch_size=4, steps=2)
    split = generate_split("add_jump")
    data = {"train": encode_pairs(list(split.train[::600])), "validation": encode_pairs(list(split.train[5::2000])),
            "test": encode_pairs(list(split.test[::1500]))}
    torch.manual_seed(0)
    pretrained = experiment.build_model(params, "lstm").eval()
    rows: list[int] = []
    pretrained.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))

    def seed_generator() -> torch.Generator:
        torch.manual_seed(0)  # what the stage's seed_everything does to the global stream (dropout)
        return torch.Generator().manual_seed(0)

    metrics = experiment.tune_cell(params, TuneCell("add_jump", "jump_run", "lstm", 0), data, pretrained,
                                   seed_generator, torch.device("cpu"), lambda values, step: None)
    return metrics, drawn, rows, data


def test_frame_tuning_draws_equitunes_batches_and_leaves_equitune_and_equizero_unchanged(monkeypatch):
    with_frame, drawn, rows, data = _tiny_cell(monkeypatch, stub_frame=False)
    assert len(drawn) == 3 and drawn[2] == drawn[0] and len(drawn[0]) == 2  # equitune, equizero, frame
    # Training forwards: equitune's and equizero's steps run |G| = 2 copies of each command, frame's only the
    # frame's copies.
    input_perm = bind_scan_group(CASES["jump_run"][0])[0]
    frame = scan_support_frame(["jump"], input_perm)
    every_copy = [2 * len(batch) for batch in drawn[0]]
    in_frame = [int(frame_mask(frame, data["train"].src[batch], input_perm).sum()) for batch in drawn[2]]
    assert rows == every_copy + every_copy + in_frame and sum(in_frame) < sum(every_copy)
    without_frame, _, _, _ = _tiny_cell(monkeypatch, stub_frame=True)
    unchanged = [key for key in with_frame if not key.startswith("frame") and not key.endswith("_cost")
                 and key not in ("validation_curve", "decoding_speed")]
    assert {"equitune", "equizero", "curve", "equitune_combinations", "equitune_equivariance_error"} <= set(unchanged)
    for key in unchanged:
        assert with_frame[key] == without_frame[key], key
    for method in ("equitune", "equizero"):
        assert with_frame["validation_curve"][method] == without_frame["validation_curve"][method]
    assert with_frame["frame_0_steps"] == without_frame["frame_0_steps"]
    assert with_frame["frame_decoding_of_equitune"] == without_frame["frame_decoding_of_equitune"]
    # The frame method's own results: its validation curve starts at the pretrained model's frame decoding.
    curve = with_frame["validation_curve"]["frame"]
    assert set(curve) == {f"step_{s}_validation_accuracy" for s in (0, 1, 2)}
    assert curve["step_0_validation_accuracy"] == with_frame["frame_0_steps"]["validation_accuracy"]
    assert curve["step_2_validation_accuracy"] == with_frame["frame"]["validation_accuracy"]
    assert set(with_frame["frame"]) == {"test_accuracy", "validation_accuracy"}
    assert with_frame["frame_equivariance_error"] < 1e-10 < with_frame["pretrained_equivariance_error"]
    assert with_frame["frame_cost"]["training_cpu_seconds"] <= with_frame["frame_cost"]["cpu_seconds"]
