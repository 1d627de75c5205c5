"""Right answers for the params schema and the writers (issue 26, item 7): every numeric bound of every section,
pinned by hand and checked at its boundary (accepted on an inclusive bound, refused just outside; refused on an
exclusive bound, accepted just inside), and no non-finite value anywhere in a written metrics or curve file."""

from __future__ import annotations

import json
import math
from typing import Annotated, get_args

import annotated_types as at
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from equitune.images.config import ImagesParams
from equitune.nlg.config import NlgParams
from equitune.pipeline.curves import Curve
from equitune.pipeline.io import write_json
from equitune.pipeline.schema import BaseParams
from equitune.scan.config import ScanParams

# Every bounded numeric field of params.yaml, written out by hand: a loosened or tightened bound fails here, and a
# new bounded field must be added (with its reason) to this list.
EXPECTED_BOUNDS = {
    "BaseParams.threads": {"ge": 1},
    "ImagesParams.resolution": {"ge": 8},
    "ImagesData.train_size": {"ge": 1},
    "ImagesData.validation_size": {"gt": 0},
    "ImagesData.test_size": {"ge": 1},
    "ImagesData.subset_seed": {"ge": 0},
    "ImagesData.hymenoptera_size": {"ge": 8},
    "ImagesTrain.epochs": {"ge": 1},
    "ImagesTrain.batch_size": {"ge": 1},
    "ImagesTrain.lr": {"gt": 0},
    "ImagesTrain.head_lr": {"gt": 0},
    "ImagesTrain.momentum": {"ge": 0, "lt": 1},  # momentum 1 never forgets a gradient
    "ImagesTrain.weight_decay": {"ge": 0},
    "ImagesTrain.lambda_hidden": {"ge": 1},
    "ImagesTrain.canonicalization_prior_weight": {"ge": 0},  # a negative weight would push away from upright
    "ImagesGcnn.epochs": {"ge": 1},
    "ImagesGcnn.lr": {"gt": 0},
    "ImagesEvaluation.rotation_seed": {"ge": 0},
    "ImagesEvaluation.invariance_batch": {"ge": 1},
    "ImagesEvaluation.batch_size": {"ge": 1},
    "ImagesFigures.feature_image_index": {"ge": 0},
    "ImagesFigures.feature_channels": {"ge": 1, "le": 16},
    "ImagesFigures.feature_resolution": {"ge": 32},
    "ScanParams.threads": {"ge": 1},
    "ScanData.download_timeout_s": {"gt": 0},
    "ScanData.validation_fraction": {"gt": 0, "lt": 1},  # no validation split, or no training lines, is refused
    "ScanData.validation_seed": {"ge": 0},
    "ScanModel.hidden_size": {"ge": 1},
    "ScanModel.layers": {"ge": 1},
    "ScanModel.dropout": {"ge": 0, "lt": 1},
    "ScanModel.source_length": {"ge": 9},  # the longest SCAN command has 9 words
    "ScanPretrain.examples": {"ge": 1},
    "ScanPretrain.batch_size": {"ge": 1},
    "ScanPretrain.lr": {"gt": 0},
    "ScanPretrain.teacher_forcing": {"ge": 0, "le": 1},  # a probability
    "ScanPretrain.grad_clip": {"gt": 0},
    "ScanPretrain.validate_every_examples": {"ge": 1},
    "ScanPretrain.bucket_batches": {"ge": 1},
    "ScanPretrain.warmup_fraction": {"gt": 0, "lt": 1},
    "ScanTune.batch_size": {"ge": 1},
    "ScanTune.weight_decay": {"ge": 0},
    "ScanTune.grad_clip": {"gt": 0},
    "ScanTune.bucket_batches": {"ge": 1},
    "ScanEvaluation.batch_size": {"ge": 1},
    "ScanEvaluation.max_commands": {"ge": 1},  # at least one command (null: all)
    "ScanEvaluation.max_output_length": {"ge": 49},  # the longest SCAN output (48 actions) and its <eos>
    "NlgParams.samples_per_prompt": {"ge": 1},
    "NlgParams.top_k": {"ge": 1},
    "NlgParams.max_new_tokens": {"ge": 1},
    "NlgParams.batch_size": {"ge": 1},
    "NlgParams.sentiment_threshold": {"gt": 0, "lt": 1},
    "PerplexityParams.window": {"ge": 8},
    "PerplexityParams.windows_per_axis": {"ge": 1},
    "PerplexityParams.max_tokens": {"ge": 16},
    "PerplexityParams.batch_size": {"ge": 1},
    "ControlParams.biased_demographic": {"ge": 0},
    "ControlParams.bonus": {"gt": 0},
    "ConfidenceParams.level": {"gt": 0.5, "lt": 1},  # a confidence level above one half
    "ConfidenceParams.resamples": {"ge": 100},
}

KINDS = {at.Ge: "ge", at.Gt: "gt", at.Le: "le", at.Lt: "lt"}


def _models(annotation, seen: list) -> list:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation not in seen:
        seen.append(annotation)
        for field in annotation.model_fields.values():
            _models(field.annotation, seen)
    for argument in get_args(annotation):
        _models(argument, seen)
    return seen


def _declared() -> dict[str, tuple[dict, object]]:
    found = {}
    for model in [m for root in (BaseParams, ImagesParams, ScanParams, NlgParams) for m in _models(root, [])]:
        for name, field in model.model_fields.items():
            bounds = {KINDS[type(m)]: getattr(m, KINDS[type(m)]) for m in field.metadata if type(m) in KINDS}
            if bounds:
                found[f"{model.__name__}.{name}"] = (bounds, field)
    return found


DECLARED = _declared()


def test_every_bound_is_the_one_written_by_hand():
    assert {key: bounds for key, (bounds, _) in DECLARED.items()} == EXPECTED_BOUNDS


def _cases(bounds: dict, integer: bool):
    """(value, accepted) at and just beyond each bound."""
    def step(value, direction):
        return value + direction if integer else math.nextafter(value, direction * math.inf)
    for kind, value in bounds.items():
        if kind == "ge":
            yield value, True
            yield step(value, -1), False
        elif kind == "gt":
            yield value, False
            yield step(value, +1), True
        elif kind == "le":
            yield value, True
            yield step(value, +1), False
        elif kind == "lt":
            yield value, False
            yield step(value, -1), True


@pytest.mark.parametrize("key", sorted(EXPECTED_BOUNDS))
def test_each_bound_accepts_its_boundary_and_refuses_just_outside(key):
    bounds, field = DECLARED[key]
    arguments = get_args(field.annotation) or (field.annotation,)
    integer = float not in arguments
    adapter = TypeAdapter(Annotated[field.annotation, field])
    for value, accepted in _cases(EXPECTED_BOUNDS[key], integer):
        if accepted:
            adapter.validate_python(value)
        else:
            with pytest.raises(ValidationError):
                adapter.validate_python(value)


# ------------------------------------------------------------------------------------ non-finite values
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["top", "nested dict", "list in dict", "tuple in list", "dict in tuple"])
def test_write_json_refuses_a_non_finite_value_anywhere(tmp_path, bad, where):
    data = {"top": bad, "nested dict": {"a": {"b": bad}}, "list in dict": {"a": [1.0, bad]},
            "tuple in list": [(1.0, bad)], "dict in tuple": ({"a": bad},)}[where]
    target = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match="non-finite"):
        write_json(target, {"ok": 1.0, "value": data})
    assert not target.exists()
    write_json(target, {"ok": 1.0, "nested": [{"a": (0.0, -1e308)}]})
    assert json.loads(target.read_text()) == {"ok": 1.0, "nested": [{"a": [0.0, -1e308]}]}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_curve_refuses_non_finite_values(tmp_path, bad):
    curve = Curve(tmp_path / "curve.csv", "step", ["loss", "accuracy"])
    curve.add(1, {"loss": 0.5, "accuracy": 1.0})
    with pytest.raises(ValueError, match="non-finite"):
        curve.add(2, {"loss": bad})
    curve.write()
    assert (tmp_path / "curve.csv").read_text() == "step,loss,accuracy\n1,0.5,1\n"
