"""Equality, general and neutral word lists, checked and mapped to token ids of one tokenizer.

The token rule (also stated in ``data/words.yaml``): each listed word has the forms ``" word"``, ``"word"``,
``" Word"`` and ``"Word"`` (``Word`` = first letter upper-cased; duplicates collapse). The space-prefixed form as
written is the word's *primary* form and must be exactly one token, else :class:`WordListError`. Every other
form is used when it is one token; for an equality set, a form is used only when it is one token for *every*
word of the set (a permutation must pair tokens one to one). Forms left out are returned in
:attr:`AxisWords.skipped_forms` with the reason, so callers can write and report them: nothing is dropped silently.

A bad list (a word in two sets or lists, sets of unequal size, a set of fewer than two words, an axis missing
from the file, a primary form that is not one token) raises :class:`WordListError` naming the word and the rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from ..core.groups import GroupSpecError, VocabPermutation, WordCycles

__all__ = ["AxisWords", "WordListError", "load_word_lists", "bind_axis", "equality_form_table", "form_table_markdown",
           "word_forms"]


class WordListError(GroupSpecError):
    """A word list that cannot be turned into a vocabulary permutation (the stage exits 2 with this message)."""


def load_word_lists(source: str = "default") -> dict[str, Any]:
    """The raw word-list file: 'default' is the file shipped in the package, anything else a path."""
    if source == "default":
        text = resources.files("equitune.nlg").joinpath("data/words.yaml").read_text()
        origin = "equitune/nlg/data/words.yaml"
    else:
        path = Path(source)
        if not path.exists():
            raise WordListError(f"nlg.word_lists: file {source!r} not found (use 'default' or a path to a YAML file)")
        text, origin = path.read_text(), source
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise WordListError(f"{origin}: expected a mapping axis -> {{equality, general, neutral}}")
    return data


def word_forms(word: str) -> list[str]:
    """The surface forms of a word, primary (space-prefixed, as written) first."""
    capitalised = word[:1].upper() + word[1:]
    forms = [" " + word, word, " " + capitalised, capitalised]
    return list(dict.fromkeys(forms))


def _single_token(tokenizer, form: str) -> int | None:
    ids = tokenizer.encode(form, add_special_tokens=False)
    if len(ids) != 1 or tokenizer.decode(ids) != form:
        return None
    return ids[0]


def _pieces(tokenizer, form: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer.encode(form, add_special_tokens=False))


@dataclass(frozen=True)
class AxisWords:
    """One axis's word lists as token ids of one tokenizer."""

    axis: str
    equality_sets: tuple[tuple[str, ...], ...]  # as written in the file
    equality_cycles: tuple[tuple[int, ...], ...]  # token ids; one cycle per (set, form) that is used
    general_ids: tuple[int, ...]
    neutral_ids: tuple[int, ...]
    token_text: dict[int, str] = field(default_factory=dict)  # id -> surface form, for reports
    skipped_forms: tuple[str, ...] = ()  # "form of word: reason"

    @property
    def order(self) -> int:
        return len(self.equality_sets[0])

    def permutation(self, vocab_size: int) -> VocabPermutation:
        """The cyclic group shifting every equality set by one place, bound to ids ``0 .. vocab_size-1``."""
        top = max(i for cycle in self.equality_cycles for i in cycle)
        if top >= vocab_size:
            raise WordListError(f"axis {self.axis!r}: token id {top} is outside the model's vocabulary ({vocab_size})")
        cycles = [[str(i) for i in cycle] for cycle in self.equality_cycles]
        # The core binder takes a word -> id map; the words here are the ids themselves, over the whole vocabulary.
        return WordCycles(cycles).bind({str(i): i for i in range(vocab_size)})

    def equality_mask(self, vocab_size: int) -> torch.Tensor:
        """The tokens the group moves (every used form of every equality word) as a bool ``[vocab_size]``."""
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[[t for cycle in self.equality_cycles for t in cycle]] = True
        return mask

    def general_mask(self, vocab_size: int) -> torch.Tensor:
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[list(self.general_ids)] = True
        return mask

    @classmethod
    def from_json(cls, axis: str, data: Mapping[str, Any]) -> AxisWords:
        """Rebuild from :meth:`to_json` output (the prompts stage's words, so later stages need no tokenizer)."""
        text = {t["id"]: t["text"] for c in data["equality_cycles"] for t in c}
        text.update({t["id"]: t["text"] for t in data["general"] + data["neutral"]})
        return cls(axis, tuple(tuple(s) for s in data["equality_sets"]),
                   tuple(tuple(t["id"] for t in c) for c in data["equality_cycles"]),
                   tuple(t["id"] for t in data["general"]), tuple(t["id"] for t in data["neutral"]),
                   text, tuple(data["skipped_forms"]))

    def to_json(self) -> dict[str, Any]:
        return {
            "equality_sets": [list(s) for s in self.equality_sets],
            "equality_cycles": [[{"id": i, "text": self.token_text[i]} for i in c] for c in self.equality_cycles],
            "general": [{"id": i, "text": self.token_text[i]} for i in self.general_ids],
            "neutral": [{"id": i, "text": self.token_text[i]} for i in self.neutral_ids],
            "skipped_forms": list(self.skipped_forms),
        }


def _word_list(entry: Mapping[str, Any], key: str, where: str) -> list:
    value = entry.get(key, [])
    if value is None:
        value = []
    if not isinstance(value, list):
        raise WordListError(f"{where}.{key}: expected a list; got {value!r}")
    return value


def bind_axis(word_lists: Mapping[str, Any], axis: str, tokenizer) -> AxisWords:
    """Check one axis's lists and map them to token ids (see the module docstring for the rule)."""
    if axis not in word_lists:
        raise WordListError(f"word lists have no axis {axis!r}; available: {sorted(word_lists)}")
    entry = word_lists[axis]
    if not isinstance(entry, Mapping):
        raise WordListError(f"word lists: axis {axis!r} must be a mapping with equality/general/neutral")
    unknown = set(entry) - {"equality", "general", "neutral"}
    if unknown:
        raise WordListError(f"word lists: axis {axis!r} has unknown key(s) {sorted(unknown)}; "
                            "allowed: equality, general, neutral")
    sets = _word_list(entry, "equality", axis)
    if not sets:
        raise WordListError(f"{axis}.equality: at least one word set is needed")
    for i, word_set in enumerate(sets):
        if not isinstance(word_set, list) or len(word_set) < 2 or not all(isinstance(w, str) and w for w in word_set):
            raise WordListError(f"{axis}.equality[{i}]: expected a list of at least two words; got {word_set!r}")
    sizes = [len(s) for s in sets]
    if len(set(sizes)) != 1:
        raise WordListError(f"{axis}.equality: all sets must have the same size (one group element shifts them all "
                            f"together); got sizes {sizes}")
    general = _word_list(entry, "general", axis)
    neutral = _word_list(entry, "neutral", axis)

    # A word may appear once in the whole axis (case-insensitively, since capitalised forms are generated).
    seen: dict[str, str] = {}
    places = [(w, f"equality[{i}]") for i, s in enumerate(sets) for w in s]
    places += [(w, "general") for w in general] + [(w, "neutral") for w in neutral]
    for word, place in places:
        if not isinstance(word, str) or not word or word != word.strip():
            raise WordListError(f"{axis}.{place}: {word!r} is not a word (non-empty text without surrounding spaces)")
        key = word.lower()
        if key in seen:
            raise WordListError(f"{axis}: word {word!r} appears twice ({seen[key]} and {place}); "
                                "each word may belong to one set or list only")
        seen[key] = place

    def primary_id(word: str, place: str) -> int:
        form = " " + word
        token = _single_token(tokenizer, form)
        if token is None:
            raise WordListError(f"{axis}.{place}: word {word!r} is not a single token for this tokenizer "
                                f"({form!r} -> {_pieces(tokenizer, form)}); the rule needs its space-prefixed form "
                                "to be one token: remove the word (and its partners) or choose another")
        return token

    token_text: dict[int, str] = {}
    skipped: list[str] = []
    cycles: list[tuple[int, ...]] = []
    for i, word_set in enumerate(sets):
        for word in word_set:
            primary_id(word, f"equality[{i}]")
        forms_per_word = [word_forms(w) for w in word_set]
        for k in range(max(len(f) for f in forms_per_word)):
            forms = [f[k] if k < len(f) else None for f in forms_per_word]
            ids = [None if f is None else _single_token(tokenizer, f) for f in forms]
            if all(t is not None for t in ids):
                cycles.append(tuple(ids))
                token_text.update(zip(ids, forms, strict=False))
            elif k > 0:
                missing = [f"{f!r} -> {_pieces(tokenizer, f)}" for f, t in zip(forms, ids, strict=False) if f is not None and t is None]
                skipped.append(f"equality[{i}] form {k} {[f for f in forms if f]}: not one token for every word "
                               f"({'; '.join(missing) or 'form collapses for some word'})")

    def bind_list(words: Sequence[str], place: str) -> list[int]:
        ids = []
        for word in words:
            ids.append(primary_id(word, place))
            token_text[ids[-1]] = " " + word
            for form in word_forms(word)[1:]:
                token = _single_token(tokenizer, form)
                if token is None:
                    skipped.append(f"{place} {form!r}: not one token ({_pieces(tokenizer, form)})")
                else:
                    ids.append(token)
                    token_text[token] = form
        return ids

    general_ids = bind_list(general, "general")
    neutral_ids = bind_list(neutral, "neutral")

    # Distinct words can still share a token (a tokenizer that lower-cases): that would break the permutation.
    owner: dict[int, str] = {}
    for label, ids in [("equality", [t for c in cycles for t in c]), ("general", general_ids), ("neutral", neutral_ids)]:
        for token in ids:
            if token in owner:
                raise WordListError(f"{axis}: token {token_text.get(token)!r} (id {token}) is used twice "
                                    f"({owner[token]} and {label}); the tokenizer merges two listed words")
            owner[token] = label
    return AxisWords(axis, tuple(tuple(s) for s in sets), tuple(cycles), tuple(general_ids), tuple(neutral_ids),
                     token_text, tuple(skipped))


def equality_form_table(word_lists: Mapping[str, Any], axes: Sequence[str], tokenizer) -> list[dict[str, Any]]:
    """Every equality word's forms and how the tokenizer splits them: one row per (axis, word) with, per form,
    the token pieces and whether the form is one token (the rule above needs the space-prefixed form to be)."""
    rows = []
    for axis in axes:
        for word_set in word_lists.get(axis, {}).get("equality", []) or []:
            for word in word_set:
                forms = {form: _pieces(tokenizer, form) for form in word_forms(word)}
                rows.append({"axis": axis, "word": word, "forms": forms,
                             "single": {form: _single_token(tokenizer, form) is not None for form in forms}})
    return rows


def form_table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table of :func:`equality_form_table` in Markdown: one column per form position (" w", "w", " W", "W")."""
    lines = ["| axis | word | ' word' | 'word' | ' Word' | 'Word' |", "|---|---|---|---|---|---|"]
    for row in rows:
        cells = []
        for k in range(4):
            forms = word_forms(row["word"])
            if k >= len(forms):
                cells.append("(same)")
                continue
            form = forms[k]
            cells.append("1 token" if row["single"][form] else " + ".join(repr(p) for p in row["forms"][form]))
        lines.append(f"| {row['axis']} | {row['word']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m equitune.nlg.words [params.yaml]``: how the params' tokenizer splits every equality word."""
    import argparse

    from ..pipeline.schema import load_section
    from .config import NlgParams
    from .lm import load_tokenizer

    parser = argparse.ArgumentParser(prog="python -m equitune.nlg.words", description=main.__doc__)
    parser.add_argument("params", nargs="?", default="params.yaml", type=Path)
    args = parser.parse_args(argv)
    nlg = load_section(args.params, "nlg", NlgParams).section
    axes = [spec.words for spec in nlg.axes.values()]
    print(form_table_markdown(equality_form_table(load_word_lists(nlg.word_lists), axes, load_tokenizer(nlg.model))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
