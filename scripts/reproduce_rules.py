"""The rules of the reproduce check, read from reproduce.yaml, as pure functions over two metrics trees.

A metrics tree maps each metrics file (``metrics/scan/add_jump-lstm-0.json``) to its flattened content
(``{"equitune/test_accuracy": 0.82, ...}``: nested keys joined with "/", as MLflow names them). The committed tree
is compared with the reproduced one in five ways (scripts/check_reproduce.py runs them and prints the verdicts):

1. :func:`compare_structure` (always): the same files and keys on both sides; a missing metric fails.
2. :func:`compare_environment`: the committed environment record against the reproduced one, on the fields
   reproduce.yaml names (CPU kernels, vendor, library versions).
3. :func:`compare_exact` (only when the environment matches): every value within ``abs + rel * |committed|``.
4. :func:`compare_aggregates` (always): per aggregate cell (a file pattern and key with the seed left out), the
   mean over seeds must agree within a band derived from the seed-to-seed spread and the number of test examples
   (the rule is in :func:`aggregate_band`), or within a fixed band for quantities that do not depend on training.
5. :func:`check_claims` (always, on both trees): the paper's qualitative claims, e.g. "equitune above finetune".

Patterns: in ``exact`` rules and in claims, fnmatch patterns (``*`` matches anything, "/" included). In aggregate
sets, ``{name}`` placeholders: one path segment (no "/"), and ``{seed}`` digits; every placeholder but ``seed``
names the cell, ``seed`` is averaged over.
"""

from __future__ import annotations

import fnmatch
import math
import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Tree = dict[str, dict[str, object]]
"""metrics file -> flattened content."""


# ----- reproduce.yaml ---------------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tolerance(_Strict):
    abs: float = Field(0.0, ge=0)
    rel: float = Field(0.0, ge=0)

    def allowed(self, reference: float) -> float:
        return self.abs + self.rel * abs(reference)


class Rule(Tolerance):
    pattern: str


class Exclusion(_Strict):
    pattern: str
    reason: str = Field(min_length=1, description="why this metric cannot be compared (shown in the output)")


class Exact(_Strict):
    """Per-cell digits: the first exclusion, else the first rule, else the default whose pattern matches."""

    default: Tolerance
    rules: list[Rule] = []
    exclude: list[Exclusion] = []


class EnvironmentRule(_Strict):
    record: str = Field(description="the environment record among the metrics files (compared only here)")
    match: list[str] = Field(min_length=1, description="fnmatch patterns of the record's fields that must agree")


class Examples(_Strict):
    """How many test examples each value of a set is a proportion of (for the binomial floor of the band):
    a constant, a key of the same file (placeholders of the set's key filled in), or per file pattern."""

    count: int | None = Field(None, gt=0)
    key: str | None = None
    by_file: dict[str, int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        if sum(x is not None for x in (self.count, self.key, self.by_file)) != 1:
            raise ValueError("give exactly one of count, key, by_file")
        return self


class AggregateSet(_Strict):
    name: str
    file: str = Field(description="metrics file pattern with {placeholders}; {seed} is averaged over")
    keys: list[str] = Field(min_length=1, description="key patterns with {placeholders} (one path segment each)")
    examples: Examples | None = Field(None, description="proportions: the number of test examples per value")
    band: Tolerance | None = Field(None, description="a fixed band instead of the statistical one (quantities that "
                                                     "do not go through training, e.g. a pretrained model's perplexity)")

    @model_validator(mode="after")
    def _spread_has_a_source(self):
        if any("{seed}" in key for key in self.keys):
            raise ValueError("{seed} belongs in the file pattern (one metrics file per seed), not in a key")
        if "{seed}" not in self.file and self.examples is None and self.band is None:
            raise ValueError("without {seed} in the file pattern there is no seed spread: give examples (the "
                             "binomial floor) or a fixed band")
        return self


class Aggregates(_Strict):
    z: float = Field(gt=0, description="half-width of the band in standard errors of the difference of the means")
    sets: list[AggregateSet] = []


class Selection(_Strict):
    file: str = Field(description="fnmatch pattern over metrics files")
    key: str = Field(description="fnmatch pattern over flattened keys")
    reduce: Literal["mean", "min", "max", "max_abs"] = "mean"


class Claim(_Strict):
    claim: str = Field(min_length=1, description="the claim in words (printed)")
    left: Selection
    op: Literal[">", ">=", "<", "<=", "=="]
    right: Selection | float
    margin: float = Field(0.0, ge=0, description="'>'/'>=': left must exceed right + margin; '<'/'<=': right - margin")
    tolerance: Tolerance = Field(Tolerance(), description="'==': |left - right| <= abs + rel * |right|")


class ReproduceConfig(_Strict):
    environment: EnvironmentRule
    exact: Exact
    aggregates: Aggregates
    claims: list[Claim] = []


# ----- trees ------------------------------------------------------------------------------------------------------

def flatten(data, prefix: str = "") -> dict:
    """Nested dicts and lists to {"a/b/0": leaf}: the names equitune.pipeline.tracking gives the same metrics in MLflow."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return {prefix.rstrip("/"): data}
    out = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}{key}/"))
    return out


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ----- 1. structure -----------------------------------------------------------------------------------------------

def compare_structure(committed: Tree, reproduced: Tree) -> list[str]:
    """Every committed file and key must be reproduced, and nothing uncommitted produced."""
    problems = []
    for file in sorted(set(committed) | set(reproduced)):
        if file not in reproduced:
            problems.append(f"{file}: not produced by dvc repro")
        elif file not in committed:
            problems.append(f"{file}: produced by dvc repro but not committed")
        else:
            old, new = committed[file], reproduced[file]
            problems += [f"{file}:{key}: missing from the reproduced metrics" for key in sorted(set(old) - set(new))]
            problems += [f"{file}:{key}: produced now but not in the committed metrics (commit the new results)"
                         for key in sorted(set(new) - set(old))]
    return problems


# ----- 2. environment ---------------------------------------------------------------------------------------------

def compare_environment(committed: Mapping | None, reproduced: Mapping | None, rule: EnvironmentRule) -> list[str]:
    """The differences between the two environment records on the ``match`` fields ([] = they match)."""
    if committed is None:
        return [f"no committed environment record ({rule.record})"]
    if reproduced is None:
        return [f"the reproduced run wrote no environment record ({rule.record})"]
    old, new = flatten(dict(committed)), flatten(dict(reproduced))
    fields = sorted(k for k in set(old) | set(new) if any(fnmatch.fnmatchcase(k, p) for p in rule.match))
    return [f"{k}: committed {old.get(k, '(absent)')!r}, here {new.get(k, '(absent)')!r}"
            for k in fields if old.get(k) != new.get(k)]


# ----- 3. exact digits --------------------------------------------------------------------------------------------

def tolerance_for(name: str, exact: Exact) -> Tolerance | Exclusion:
    """The first exclusion, else the first rule, else the default whose pattern matches "<file>:<key>"."""
    for exclusion in exact.exclude:
        if fnmatch.fnmatchcase(name, exclusion.pattern):
            return exclusion
    for rule in exact.rules:
        if fnmatch.fnmatchcase(name, rule.pattern):
            return rule
    return exact.default


def compare_values(old, new, tolerance: Tolerance) -> str | None:
    """None when ``new`` reproduces ``old``; else why not. Numbers within abs + rel*|old|; anything else equal."""
    if is_number(old) and is_number(new):
        if old == new or (math.isnan(old) and math.isnan(new)):
            return None
        allowed = tolerance.allowed(old)
        if math.isfinite(old) and math.isfinite(new) and abs(new - old) <= allowed:
            return None
        return f"committed {old!r}, reproduced {new!r} (|diff| {abs(new - old):.3g} > allowed {allowed:.3g})"
    if type(old) is not type(new) or old != new:
        return f"committed {old!r}, reproduced {new!r}"
    return None


def compare_exact(committed: Tree, reproduced: Tree, exact: Exact) -> tuple[int, list[str], list[str]]:
    """(values compared, problems, skip notes) over the keys present on both sides."""
    compared, problems, skipped = 0, [], []
    for file in sorted(set(committed) & set(reproduced)):
        old, new = committed[file], reproduced[file]
        for key in sorted(set(old) & set(new)):
            name = f"{file}:{key}"
            rule = tolerance_for(name, exact)
            if isinstance(rule, Exclusion):
                skipped.append(f"{name}: {rule.reason}")
                continue
            compared += 1
            why = compare_values(old[key], new[key], rule)
            if why:
                problems.append(f"{name}: {why}")
    return compared, problems, skipped


# ----- 4. aggregates ----------------------------------------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern:
    """``{name}`` -> a named group (``{seed}``: digits; others: one path segment); ``*`` -> any run of non-"/"
    characters; everything else literal."""
    parts, position = [], 0
    for match in re.finditer(r"\{(\w+)\}|\*", pattern):
        parts.append(re.escape(pattern[position:match.start()]))
        if match.group(0) == "*":
            parts.append("[^/]*")
        elif match.group(1) == "seed":
            parts.append(r"(?P<seed>\d+)")
        else:
            parts.append(f"(?P<{match.group(1)}>[^/]+?)")
        position = match.end()
    parts.append(re.escape(pattern[position:]))
    return re.compile("".join(parts))


@dataclass
class Cell:
    """One aggregate cell on one side: the per-seed values and the number of test examples behind each."""

    values: dict[str, float] = field(default_factory=dict)  # seed ("" when the file has none) -> value
    examples: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values())

    @property
    def squares(self) -> float:
        """Sum of squared deviations from the mean (the numerator of the sample variance)."""
        mean = self.mean
        return sum((v - mean) ** 2 for v in self.values.values())


def _examples(aggregate: AggregateSet, file: str, flat: Mapping, fields: Mapping[str, str]) -> int | None:
    spec = aggregate.examples
    if spec is None:
        return None
    if spec.count is not None:
        return spec.count
    if spec.by_file is not None:
        return next((n for pattern, n in spec.by_file.items() if fnmatch.fnmatchcase(file, pattern)), None)
    value = flat.get(spec.key.format(**fields))
    return int(value) if is_number(value) and value > 0 else None


def collect_cells(aggregate: AggregateSet, tree: Tree) -> dict[str, Cell]:
    """Aggregate cells of ``tree``: "<file with {seed}>:<key>" -> its per-seed values."""
    file_regex = _pattern_regex(aggregate.file)
    key_regexes = [_pattern_regex(k) for k in aggregate.keys]
    cells: dict[str, Cell] = {}
    for file, flat in sorted(tree.items()):
        found = file_regex.fullmatch(file)
        if not found:
            continue
        fields = {k: v for k, v in found.groupdict().items() if k != "seed"}
        seed = found.group("seed") if "seed" in found.groupdict() else ""
        name = file if not seed else file[:found.start("seed")] + "{seed}" + file[found.end("seed"):]
        for key, value in flat.items():
            for key_regex in key_regexes:
                key_match = key_regex.fullmatch(key)
                if key_match and is_number(value):
                    cell = cells.setdefault(f"{name}:{key}", Cell())
                    cell.values[seed] = float(value)
                    n = _examples(aggregate, file, flat, {**fields, **key_match.groupdict()})
                    if n is not None:
                        cell.examples.append(n)
                    break
    return cells


@dataclass(frozen=True)
class AggregateRow:
    set: str
    cell: str
    committed: float
    committed_seeds: int
    reproduced: float
    reproduced_seeds: int
    band: float
    sigma: float | None  # the standard deviation the band was built from (None: a fixed band)

    @property
    def ok(self) -> bool:
        return abs(self.reproduced - self.committed) <= self.band

    def describe(self) -> str:
        how = "fixed band" if self.sigma is None else f"sigma {self.sigma:.3g}"
        return (f"{self.cell}: committed {self.committed:.4g} (k={self.committed_seeds}), reproduced "
                f"{self.reproduced:.4g} (k={self.reproduced_seeds}), |diff| {abs(self.reproduced - self.committed):.3g} "
                f"{'<=' if self.ok else '>'} band {self.band:.3g} ({how})")


def aggregate_band(old: Cell, new: Cell, pooled_variance: float, z: float) -> tuple[float, float]:
    """(band, sigma) for the difference of the two means over seeds.

    The rule: sigma^2 = max(the cell's own seed variance, pooled over both runs; the set's seed variance, pooled
    over all its cells and both runs; p(1 - p) / n for a proportion p over n test examples, p moved half an
    example towards 1/2 so that 0 % or 100 % keeps a spread), and the means must
    agree within z * sigma * sqrt(1 / k_committed + 1 / k_reproduced), k = number of seeds. That is a confidence
    interval of the difference of two means, with the spread estimated from more than the cell's own few seeds
    (two seeds alone give a variance from two numbers, often near zero) and never below the sampling error of
    a test set of n examples.
    """
    degrees = len(old.values) + len(new.values) - 2
    own = (old.squares + new.squares) / degrees if degrees > 0 else 0.0
    floor = 0.0
    examples = old.examples + new.examples
    if examples:
        n = min(examples)
        p = min(max(statistics.fmean([*old.values.values(), *new.values.values()]), 0.0), 1.0)
        p = (n * p + 0.5) / (n + 1)  # half an example each way (Jeffreys): a proportion of 0 or 1 keeps a spread
        floor = p * (1 - p) / n
    sigma = math.sqrt(max(own, pooled_variance, floor))
    return z * sigma * math.sqrt(1 / len(old.values) + 1 / len(new.values)), sigma


def compare_aggregates(config: Aggregates, committed: Tree, reproduced: Tree) -> tuple[list[AggregateRow], list[str]]:
    """Rows of every aggregate cell, and problems (a band exceeded, a set or cell without values)."""
    rows, problems = [], []
    for aggregate in config.sets:
        old_cells, new_cells = collect_cells(aggregate, committed), collect_cells(aggregate, reproduced)
        if not old_cells:
            problems.append(f"aggregate set {aggregate.name!r}: no committed metric matches {aggregate.file} "
                            f"{aggregate.keys} (update reproduce.yaml)")
            continue
        for name in sorted(set(old_cells) ^ set(new_cells)):
            side = "reproduced" if name in old_cells else "committed"
            problems.append(f"aggregate {aggregate.name!r}: {name} has no {side} values")
        shared = sorted(set(old_cells) & set(new_cells))
        squares = sum(old_cells[n].squares + new_cells[n].squares for n in shared)
        degrees = sum(len(old_cells[n].values) + len(new_cells[n].values) - 2 for n in shared)
        pooled = squares / degrees if degrees > 0 else 0.0
        for name in shared:
            old, new = old_cells[name], new_cells[name]
            if aggregate.band is not None:
                band, sigma = aggregate.band.allowed(old.mean), None
            else:
                band, sigma = aggregate_band(old, new, pooled, config.z)
            row = AggregateRow(aggregate.name, name, old.mean, len(old.values), new.mean, len(new.values), band, sigma)
            rows.append(row)
            if not row.ok:
                problems.append(f"aggregate {aggregate.name!r}: {row.describe()}")
    return rows, problems


# ----- 5. claims --------------------------------------------------------------------------------------------------

_REDUCE = {
    "mean": statistics.fmean,
    "min": min,
    "max": max,
    "max_abs": lambda values: max(abs(v) for v in values),
}


def select(selection: Selection, tree: Tree) -> list[float]:
    """Every number in ``tree`` at a file and key matching the selection."""
    return [float(value) for file, flat in sorted(tree.items()) if fnmatch.fnmatchcase(file, selection.file)
            for key, value in sorted(flat.items()) if fnmatch.fnmatchcase(key, selection.key) and is_number(value)]


def _side(side: Selection | float, tree: Tree) -> tuple[float | None, str]:
    if not isinstance(side, Selection):
        return float(side), f"{side:g}"
    values = select(side, tree)
    if not values:
        return None, f"{side.reduce} of {side.file}:{side.key} (no metric matches)"
    value = _REDUCE[side.reduce](values)
    return value, f"{side.reduce} of {len(values)} value(s) {value:.4g}"


def check_claim(claim: Claim, tree: Tree) -> tuple[bool, str]:
    """(holds, what was compared) for one claim on one tree; a side that matches no metric fails."""
    left, left_text = _side(claim.left, tree)
    right, right_text = _side(claim.right, tree)
    if left is None or right is None:
        return False, f"{left_text} {claim.op} {right_text}"
    if claim.op == "==":
        allowed = claim.tolerance.allowed(right)
        holds = abs(left - right) <= allowed
        detail = f" (|diff| {abs(left - right):.3g}, allowed {allowed:.3g})"
    else:
        target = right + claim.margin if claim.op in (">", ">=") else right - claim.margin
        holds = {">": left > target, ">=": left >= target, "<": left < target, "<=": left <= target}[claim.op]
        detail = f" (margin {claim.margin:g})" if claim.margin else ""
    return holds, f"{left_text} {claim.op} {right_text}{detail}"


def check_claims(claims: list[Claim], tree: Tree) -> list[tuple[Claim, bool, str]]:
    return [(claim, *check_claim(claim, tree)) for claim in claims]
