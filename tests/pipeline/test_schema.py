"""A stage reads only its own section: `load_section` validates profile, base and that section, reports every
problem with the full key path, and never looks at (or imports the code of) the other experiments' sections."""

from __future__ import annotations

import pytest
import yaml

from equitune.pipeline.schema import ParamsError, load_section
from equitune.scan.config import ScanParams
from helpers.paths import ROOT


def write(tmp_path, edit):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_loads_profile_base_and_the_section(tmp_path):
    loaded = load_section(write(tmp_path, lambda d: None), "scan", ScanParams)
    assert loaded.profile == "default" and loaded.base.threads >= 1
    assert isinstance(loaded.section, ScanParams)


def test_other_sections_are_not_read(tmp_path):
    def break_images(data):
        data["images"] = {"nonsense": True}
    assert load_section(write(tmp_path, break_images), "scan", ScanParams).section.grid.splits


def test_every_problem_named_with_its_full_key(tmp_path):
    def edit(data):
        data["scan"]["pretrain"]["exampels"] = 5
        data["base"]["device"] = "tpu"
    with pytest.raises(ParamsError) as error:
        load_section(write(tmp_path, edit), "scan", ScanParams)
    message = str(error.value)
    assert "scan.pretrain.exampels: unknown key" in message and "(did you mean 'examples'?)" in message
    assert "base.device" in message and "'tpu'" in message


def test_a_missing_section_is_named(tmp_path):
    with pytest.raises(ParamsError, match="scan: required key is missing"):
        load_section(write(tmp_path, lambda d: d.pop("scan")), "scan", ScanParams)


def test_base_only(tmp_path):
    loaded = load_section(write(tmp_path, lambda d: None), None, None)
    assert loaded.section is None and loaded.profile == "default"
