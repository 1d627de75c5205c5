"""Profiles as overlays: profiles/paper.yaml holds only what differs from params.yaml, and `python -m
equitune.params compose` merges overlays onto a base, validates and writes the params the pipeline reads."""

from __future__ import annotations

import pytest
import yaml

from equitune.params import compose, main
from helpers.paths import ROOT, profile_data


def _leaves(data, prefix=""):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), data


def _get(data, dotted):
    for part in dotted.split("."):
        data = data[part]
    return data


def test_the_paper_overlay_holds_only_differences():
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    overlay = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    same = [key for key, value in _leaves(overlay) if _get(default, key) == value]
    assert not same, f"profiles/paper.yaml repeats the default's value for {same}"


def test_compose_merges_mappings_and_replaces_lists_and_values():
    base = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 1}
    assert compose(base, {"a": {"c": [3], "d": {"x": 2}}}, {"f": None}) == {
        "a": {"b": 1, "c": [3], "d": {"e": 1, "x": 2}}, "f": None}
    assert base == {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 1}, "the base must not be changed"


def test_the_paper_profile_composes_and_validates():
    paper = profile_data("paper")
    assert paper["profile"] == "paper" and paper["images"]["resolution"] == 224
    assert paper["scan"]["pretrain"]["lr_schedule"] == "constant"  # the paper's; not inherited from the default


def test_the_paper_smoke_overlay_composes_and_validates(tmp_path, monkeypatch):
    """The CI smoke run composes paper + paper-smoke; a schema change that the overlay misses (a scalar where a
    mapping is now expected) fails here in seconds, not after minutes of the slow smoke test."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "params.yaml"
    assert main(["compose", "profiles/paper.yaml", "profiles/paper-smoke.yaml", "-o", str(out)]) == 0
    written = yaml.safe_load(out.read_text())
    assert written["profile"] == "paper" and written["scan"]["grid"]["seeds"] == [0]


def test_compose_command_writes_the_validated_params(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "params.yaml"
    assert main(["compose", "profiles/paper.yaml", "-o", str(out)]) == 0
    written = yaml.safe_load(out.read_text())
    assert written == profile_data("paper")
    assert out.read_text().startswith("# Composed by `python -m equitune.params compose` from params.yaml + "
                                      "profiles/paper.yaml")


@pytest.mark.parametrize("overlay, fragment", [
    ("images:\n  trian: {epochs: 1}\n", "images.trian: unknown key"),
    ("scan:\n  grid: {rnns: [transformer]}\n", "scan.grid.rnns"),
])
def test_compose_refuses_an_overlay_that_breaks_the_schema(tmp_path, monkeypatch, capsys, overlay, fragment):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.yaml"
    bad.write_text(overlay)
    out = tmp_path / "params.yaml"
    assert main(["compose", str(bad), "-o", str(out)]) == 2
    assert fragment in capsys.readouterr().err
    assert not out.exists()


def _stages_with_params(folder, params_text: str) -> dict[str, tuple[str, dict]]:
    """DVC's own expansion of dvc.yaml under ``params_text``: stage name -> (command, the values of its params)."""
    import shutil
    import subprocess

    from dvc.repo import Repo

    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    (folder / "params.yaml").write_text(params_text)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=folder, check=True)
    with Repo(str(folder)) as repo:
        return {stage.name: (stage.cmd, {key: value for dep in stage.deps if hasattr(dep, "read_params")
                                         for key, value in dep.read_params().items()})
                for stage in repo.index.stages}


def test_the_scan_table_overlay_adds_gru_and_rnn_cells_and_leaves_the_default_stages_up_to_date(tmp_path,
                                                                                                monkeypatch):
    """`make scan-table` must run only the new cells (and the SCAN report): every stage the default has keeps its
    command and the values of its params, so DVC keeps it up to date."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "composed.yaml"
    assert main(["compose", "profiles/scan-table.yaml", "-o", str(out)]) == 0
    (tmp_path / "default").mkdir()
    (tmp_path / "table").mkdir()
    default = _stages_with_params(tmp_path / "default", (ROOT / "params.yaml").read_text())
    table = _stages_with_params(tmp_path / "table", out.read_text())
    added = set(table) - set(default)
    assert not set(default) - set(table)
    assert {name.split("@")[1].split("-")[-2] for name in added} == {"gru", "rnn"}
    assert len(added) == 2 * (6 + 9), "per kind: 2 splits x 3 seeds pretrained, 3 groups x 3 seeds tuned"
    changed = [name for name in default if default[name] != table[name]]
    # the two reports read scan.grid (and the profile); params_check reads the file, so its command runs again and
    # writes the same constant output
    assert sorted(changed) == ["report", "scan_report"], changed
