"""scripts/scan_limits.py: the kinds of test command it sorts SCAN's test splits into (the model part runs on the
pipeline's models, after `dvc repro`; its own check refuses to write unless it rebuilt the committed tuned model)."""

from __future__ import annotations

import pytest

from equitune.scan.data import generate_split
from helpers.paths import ROOT, load_script


@pytest.fixture(scope="module")
def limits():
    return load_script(ROOT / "scripts" / "scan_limits.py")


@pytest.mark.parametrize(("command", "kind"), [
    ("walk around right", "no 'left'"),
    ("walk around right and turn left", "'left' elsewhere"),
    ("look left after jump around right twice", "'left' elsewhere"),
    ("run around left and walk around right", "also 'around left'"),
])
def test_around_right_commands_are_sorted_by_what_the_swap_reaches(limits, command, kind):
    assert limits._kind(limits.KINDS[("around_right", "left_right")], command.split()).startswith(kind)


def test_every_test_command_has_one_kind_and_the_shares_are_the_grammars(limits):
    for (split, _), kinds in limits.KINDS.items():
        test = generate_split(split).test
        counts = {name: 0 for name, _ in kinds}
        for command, _ in test:
            counts[limits._kind(kinds, command.split())] += 1
        assert sum(counts.values()) == len(test)
        if split == "around_right":  # 720 of 4,476 hold "around left" too: no swap brings them to a seen command
            assert counts["also 'around left': no swap is seen"] == 720 and len(test) == 4476
        else:
            assert 0 < counts["'jump' and 'run': no swap is seen"] < len(test)
