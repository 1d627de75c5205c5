"""params.yaml validation: every kind of bad value is refused with a message naming the key, the value and
what is allowed; the real profiles validate; a stage given bad params exits 2 and writes nothing.

The experiment sections (scan/images/nlg) test their own keys in their own test files.
"""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from equitune.params import Params, ParamsError, load_params
from equitune.pipeline.schema import StrictModel, format_validation_error
from helpers.paths import ROOT, profile_params, stage_argv


def valid_data() -> dict:
    """A valid params mapping: the committed default profile."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def error_of(tmp_path: Path, data) -> str:
    with pytest.raises(ParamsError) as caught:
        load_params(write(tmp_path, data))
    return str(caught.value)


def params_models(model: type[BaseModel] = Params) -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from ``model`` through its fields' annotations (lists, dicts, unions,
    optionals, Annotated included), keyed by the params path where it first appears."""
    found: dict[str, type[BaseModel]] = {}

    def visit(annotation, path: str) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in found.values():
                return
            found[path] = annotation
            for name, field in annotation.model_fields.items():
                visit(field.annotation, f"{path}.{name}" if path else name)
            return
        for argument in typing.get_args(annotation):
            visit(argument, f"{path}[]")

    visit(model, "")
    return found


def test_every_params_model_forbids_unknown_keys():
    """A typo anywhere in params.yaml must be an error: every model of the schema, however deeply nested (a
    section, a mapping's values, a list's items), refuses an unknown key."""
    models = params_models()
    assert {"scan", "images", "nlg", "base", "images.figures"} <= set(models), sorted(models)
    lenient = []
    for path, model in models.items():
        try:
            model.model_validate({"zz_not_a_key": 1})
            errors = []
        except ValidationError as error:
            errors = error.errors()
        refused = any(e["type"] == "extra_forbidden" and e["loc"] == ("zz_not_a_key",) for e in errors)
        if not refused or model.model_config.get("extra") != "forbid":
            lenient.append(f"{path or '(top level)'}: {model.__name__}")
    assert lenient == [], "params models that accept unknown keys"


@pytest.mark.parametrize("profile", ["default", "paper"])
def test_committed_profiles_validate(profile):
    assert profile_params(profile).profile == profile


def test_typo_at_top_level_names_key_value_and_allowed_keys(tmp_path):
    data = valid_data()
    data["bsae"] = data.pop("base")
    message = error_of(tmp_path, data)
    assert "bsae: unknown key" in message
    assert "bsae: unknown key (got bsae: {" in message
    assert "allowed keys here: profile, base, scan, images, nlg (did you mean 'base'?)" in message
    assert str(tmp_path / "params.yaml") in message


def test_typo_inside_base(tmp_path):
    data = valid_data()
    data["base"]["determinstic"] = True
    message = error_of(tmp_path, data)
    assert "base.determinstic: unknown key (got determinstic: True)" in message
    assert "allowed keys here: threads, device, deterministic, cpu_isa (did you mean 'deterministic'?)" in message


def test_unknown_key_in_nested_mappings_lists_and_optionals():
    """Experiment sections nest models in dicts, lists and `X | None`: the allowed keys are still found."""
    class Axis(StrictModel):
        demographics: list[str]

    class Optimiser(StrictModel):
        lr: float = 0.1

    class Section(StrictModel):
        axes: dict[str, Axis]
        optimiser: Optimiser | None = None
        schedule: list[Optimiser] = []

    class Top(StrictModel):
        section: Section

    bad = {"section": {"axes": {"gender": {"demographics": ["a"], "demographic": 1}},
                       "optimiser": {"lrr": 1}, "schedule": [{"l": 2}], "zzz": 0}}
    with pytest.raises(ValidationError) as caught:
        Top.model_validate(bad)
    message = format_validation_error(caught.value, "p.yaml", Top)
    assert ("section.axes.gender.demographic: unknown key (got demographic: 1); "
            "allowed keys here: demographics (did you mean 'demographics'?)") in message
    assert "section.optimiser.lrr: unknown key (got lrr: 1); allowed keys here: lr (did you mean 'lr'?)" in message
    assert "section.schedule[0].l: unknown key (got l: 2)" in message
    assert "section.zzz: unknown key (got zzz: 0); allowed keys here: axes, optimiser, schedule" in message


def test_wrong_type(tmp_path):
    data = valid_data()
    data["base"]["threads"] = "two"
    message = error_of(tmp_path, data)
    assert "base.threads" in message and "valid integer" in message and "'two'" in message


def test_out_of_range(tmp_path):
    data = valid_data()
    data["base"]["threads"] = 0
    message = error_of(tmp_path, data)
    assert "base.threads" in message and "greater than or equal to 1" in message and "(got 0)" in message


@pytest.mark.parametrize("key, value, allowed", [
    (("base", "device"), "tpu", "'cpu', 'cuda' or 'auto'"),
])
def test_bad_literal_lists_the_allowed_values(tmp_path, key, value, allowed):
    data = valid_data()
    holder = data
    for part in key[:-1]:
        holder = holder[part]
    holder[key[-1]] = value
    message = error_of(tmp_path, data)
    assert f"{'.'.join(key)}: Input should be {allowed} (got {value!r})" in message


def test_profile_names_are_short_identifiers(tmp_path):
    data = valid_data()
    data["profile"] = "Paper profile!"
    message = error_of(tmp_path, data)
    assert "profile: String should match pattern" in message and "'Paper profile!'" in message


def test_every_problem_is_reported_at_once(tmp_path):
    data = valid_data()
    data["base"].update(threads="two", device="tpu")
    data["profile"] = "Fast!"
    message = error_of(tmp_path, data)
    assert message.splitlines()[0].endswith("invalid value(s):")
    assert all(key in message for key in ("base.threads", "base.device", "profile"))


def test_missing_section(tmp_path):
    data = valid_data()
    del data["nlg"]
    assert "nlg: required key is missing" in error_of(tmp_path, data)


@pytest.mark.parametrize("content, expected", [
    ("- a\n- b\n", "got a list"),
    ("just a string\n", "got a str"),
    ("", "got an empty file"),
])
def test_non_mapping_file(tmp_path, content, expected):
    message = error_of(tmp_path, content)
    assert "expected a mapping of sections" in message and expected in message
    assert "(profile, base, ...)" in message


def test_invalid_yaml(tmp_path):
    assert "not valid YAML" in error_of(tmp_path, "base: [unclosed\n")


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def test_stage_with_bad_params_exits_2_and_writes_nothing(tmp_path):
    """pipelines/report.py, run from an empty folder, refuses a bad params file before writing any output."""
    data = valid_data()
    data["base"]["device"] = "tpu"
    params = write(tmp_path, data)
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "pipelines" / "report.py"), *stage_argv("report"),
                             "--params", str(params)], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr and "base.device" in result.stderr and "'tpu'" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(workdir.iterdir()) == []


def test_stage_with_missing_params_file_exits_2(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "pipelines" / "report.py"), *stage_argv("report"),
                             "--params", "absent.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "absent.yaml: file not found" in result.stderr
    assert list(tmp_path.iterdir()) == []
