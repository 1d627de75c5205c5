"""Finite groups as values, and their actions on images and on vocabularies.

A :class:`FiniteGroup` is an abstract group given by its Cayley table: elements are the integers
``0 .. order-1`` (``0`` is the identity) with human-readable names. An *action* binds a group to one kind
of tensor: :class:`ImageAction` (rotations and flips of ``[..., H, W]`` tensors), :class:`TokenIdAction`
(permutations of token ids) and :class:`ScoreAction` (the same permutations applied to the last, vocabulary
axis of logits or log-probabilities). Every action offers the batched operations the wrappers need:

- ``transform_all(x)``: the |G| transformed copies, stacked on a new leading axis ``[|G|, *x.shape]``;
- ``untransform_all(y)``: row ``g`` of a stacked ``[|G|, ...]`` tensor mapped back by ``g^-1``.

The Cayley tables are written from the group law, never derived from the pixel or token actions, so that
the tests can check that each action really is a homomorphism.

Groups come from params through :func:`parse_group_spec` (``c4``, ``d4``, ... or ``{cycles: [[jump, run]]}``);
every malformed spec or vocabulary binding raises :class:`GroupSpecError`, which names the offending key or
word and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .errors import GroupSpecError

__all__ = [
    "FiniteGroup",
    "GroupAction",
    "GroupSpecError",
    "ImageAction",
    "IMAGE_GROUPS",
    "ScoreAction",
    "TokenIdAction",
    "VocabPermutation",
    "WordCycles",
    "image_action",
    "parse_group_spec",
]


@dataclass(frozen=True)
class FiniteGroup:
    """A finite group given by element names and a Cayley table ``table[a][b] = a * b``."""

    name: str
    element_names: tuple[str, ...]
    table: tuple[tuple[int, ...], ...]
    inverses: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.element_names)
        if n == 0 or len(self.table) != n or any(len(row) != n for row in self.table):
            raise GroupSpecError(f"group {self.name!r}: Cayley table must be {n}x{n}")
        if any(not 0 <= c < n for row in self.table for c in row):
            raise GroupSpecError(f"group {self.name!r}: Cayley table has an entry that is not an element 0..{n - 1}")
        if any(self.table[0][b] != b or self.table[b][0] != b for b in range(n)):
            raise GroupSpecError(f"group {self.name!r}: element 0 must be the identity")
        inverses = []
        for a in range(n):
            found = [b for b in range(n) if self.table[a][b] == 0]
            if len(found) != 1:
                raise GroupSpecError(f"group {self.name!r}: element {self.element_names[a]} has no unique inverse")
            if self.table[found[0]][a] != 0:  # a right inverse that is not a left inverse: not a group
                raise GroupSpecError(f"group {self.name!r}: element {self.element_names[a]} has no two-sided inverse "
                                     f"({self.element_names[a]} * {self.element_names[found[0]]} is the identity but "
                                     f"{self.element_names[found[0]]} * {self.element_names[a]} is not)")
            inverses.append(found[0])
        t = self.table
        for a in range(n):
            for b in range(n):
                for c in range(n):
                    if t[t[a][b]][c] != t[a][t[b][c]]:
                        names = self.element_names
                        raise GroupSpecError(f"group {self.name!r}: the table is not associative: "
                                             f"({names[a]} {names[b]}) {names[c]} != {names[a]} ({names[b]} {names[c]})")
        object.__setattr__(self, "inverses", tuple(inverses))

    @property
    def order(self) -> int:
        return len(self.element_names)

    @property
    def identity(self) -> int:
        return 0

    def compose(self, a: int, b: int) -> int:
        """The element ``a * b`` (first apply ``b``, then ``a``)."""
        return self.table[a][b]

    def inverse(self, a: int) -> int:
        return self.inverses[a]

    def __len__(self) -> int:
        return self.order

    def __iter__(self):
        return iter(range(self.order))


class GroupAction(Protocol):
    """What the wrappers and the checker need from an action of ``group`` on one kind of tensor."""

    group: FiniteGroup

    def apply(self, x: torch.Tensor, g: int) -> torch.Tensor: ...

    def transform_all(self, x: torch.Tensor) -> torch.Tensor: ...

    def untransform_all(self, y: torch.Tensor) -> torch.Tensor: ...


def _check_group_axis(y: torch.Tensor, group: FiniteGroup) -> None:
    if y.dim() == 0 or y.shape[0] != group.order:
        raise ValueError(f"expected a leading group axis of size {group.order} ({group.name}); "
                         f"got shape {tuple(y.shape)}")


def _cyclic_group(name: str, order: int, element_names: Sequence[str] | None = None) -> FiniteGroup:
    names = tuple(element_names) if element_names else tuple(f"shift{k}" for k in range(order))
    table = tuple(tuple((a + b) % order for b in range(order)) for a in range(order))
    return FiniteGroup(name, names, table)


# --------------------------------------------------------------------------------------------- images
# Every image group here is a subgroup of D4. An element of D4 is a pair (k, s) acting on an image as
# "mirror left-right if s, then rotate by k quarter turns counter-clockwise": x -> r^k f^s x.
# Because f r^k = r^-k f, the law is (k1, s1)(k2, s2) = (k1 + (-1)^s1 k2 mod 4, s1 xor s2).

def _d4_product(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (k1, s1), (k2, s2) = a, b
    return ((k1 + (-k2 if s1 else k2)) % 4, s1 ^ s2)


def _d4_name(element: tuple[int, int]) -> str:
    k, s = element
    if (k, s) == (0, 0):
        return "identity"
    rotation = f"rot{90 * k}"
    if not s:
        return rotation
    # r^2 f mirrors top-bottom; name the two axis mirrors as what they are.
    return {0: "hflip", 2: "vflip"}.get(k, f"{rotation}_after_hflip")


def _image_subgroup(name: str, elements: Sequence[tuple[int, int]]) -> tuple[FiniteGroup, tuple[tuple[int, int], ...]]:
    elements = tuple(elements)
    index = {e: i for i, e in enumerate(elements)}
    table = tuple(tuple(index[_d4_product(a, b)] for b in elements) for a in elements)
    return FiniteGroup(name, tuple(_d4_name(e) for e in elements), table), elements


IMAGE_GROUPS: dict[str, tuple[tuple[int, int], ...]] = {
    "trivial": ((0, 0),),
    "hflip": ((0, 0), (0, 1)),
    "vflip": ((0, 0), (2, 1)),
    "c4": ((0, 0), (1, 0), (2, 0), (3, 0)),
    "d4": ((0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (2, 1), (3, 1)),
}
"""Image group name -> its elements as D4 pairs (quarter turns, mirrored first)."""


class ImageAction:
    """A subgroup of D4 acting on the last two (spatial) axes of a tensor ``[..., H, W]``."""

    def __init__(self, name: str):
        if name not in IMAGE_GROUPS:
            raise GroupSpecError(f"unknown image group {name!r}; allowed: {', '.join(IMAGE_GROUPS)}")
        self.group, self._elements = _image_subgroup(name, IMAGE_GROUPS[name])

    def __repr__(self) -> str:
        return f"ImageAction({self.group.name!r})"

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"image group {self.group.name!r} needs a tensor [..., H, W]; got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        rotates = any(k % 2 for k, _ in self._elements)
        if rotates and height != width:
            raise ValueError(
                f"image group {self.group.name!r} rotates by 90 degrees, which needs square images; "
                f"got H={height}, W={width} (resize or crop to a square first)"
            )

    def _apply_element(self, x: torch.Tensor, element: tuple[int, int]) -> torch.Tensor:
        k, mirrored = element
        if mirrored:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, k, dims=(-2, -1)) if k else x

    def apply(self, x: torch.Tensor, g: int) -> torch.Tensor:
        self._check(x)
        return self._apply_element(x, self._elements[g])

    def transform_all(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return torch.stack([self._apply_element(x, e) for e in self._elements])

    def untransform_all(self, y: torch.Tensor) -> torch.Tensor:
        _check_group_axis(y, self.group)
        self._check(y)
        return torch.stack([self._apply_element(y[g], self._elements[self.group.inverse(g)]) for g in self.group])


def image_action(name: str) -> ImageAction:
    return ImageAction(name)


# ---------------------------------------------------------------------------------------- vocabularies
class TokenIdAction:
    """A group acting on integer token ids through a permutation table ``[|G|, V]``."""

    def __init__(self, group: FiniteGroup, permutations: torch.Tensor):
        self.group = group
        self.permutations = permutations
        self.vocab_size = permutations.shape[1]

    def _check(self, ids: torch.Tensor) -> None:
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"token ids must be an integer tensor; got {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(
                f"token id out of range: ids span [{int(ids.min())}, {int(ids.max())}] but the vocabulary has "
                f"{self.vocab_size} entries (0..{self.vocab_size - 1})"
            )

    def apply(self, ids: torch.Tensor, g: int) -> torch.Tensor:
        self._check(ids)
        return self.permutations[g].to(ids.device)[ids.long()].to(ids.dtype)

    def transform_all(self, ids: torch.Tensor) -> torch.Tensor:
        self._check(ids)
        return self.permutations.to(ids.device)[:, ids.long()].to(ids.dtype)

    def untransform_all(self, ids: torch.Tensor) -> torch.Tensor:
        _check_group_axis(ids, self.group)
        self._check(ids)
        inverse_rows = [self.group.inverse(g) for g in self.group]
        perms = self.permutations.to(ids.device)[inverse_rows]
        flat = ids.reshape(self.group.order, -1).long()
        return torch.gather(perms, 1, flat).reshape(ids.shape).to(ids.dtype)


class ScoreAction:
    """The same permutations acting on vocabulary-indexed vectors (last axis of size V).

    With ``pi_g`` the permutation of token ids, ``(g . y)[pi_g(w)] = y[w]``: the score a model gives word ``w``
    moves to the word ``g`` sends it to. So ``g . y = y[..., pi_{g^-1}]`` and ``g^-1 . y = y[..., pi_g]``.
    """

    def __init__(self, group: FiniteGroup, permutations: torch.Tensor):
        self.group = group
        self.permutations = permutations
        self.vocab_size = permutations.shape[1]

    def _check(self, y: torch.Tensor) -> None:
        if y.shape[-1] != self.vocab_size:
            raise ValueError(f"expected a last (vocabulary) axis of size {self.vocab_size}; got shape {tuple(y.shape)}")

    def apply(self, y: torch.Tensor, g: int) -> torch.Tensor:
        self._check(y)
        return y.index_select(-1, self.permutations[self.group.inverse(g)].to(y.device))

    def transform_all(self, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.apply(y, g) for g in self.group])

    def untransform_all(self, y: torch.Tensor) -> torch.Tensor:
        _check_group_axis(y, self.group)
        self._check(y)
        # Row g is mapped by g^-1, i.e. gathered with pi_g along the vocabulary axis.
        index = self.permutations.to(y.device).reshape(self.group.order, *([1] * (y.dim() - 2)), self.vocab_size)
        return torch.gather(y, -1, index.expand_as(y))


@dataclass(frozen=True, eq=False)  # eq=False: a tensor field has no truth value to compare by
class VocabPermutation:
    """A word-cycle group bound to one vocabulary: acts on token ids and on vocabulary-indexed scores."""

    group: FiniteGroup
    permutations: torch.Tensor  # [|G|, V]: permutations[g, t] = id that g sends token t to

    @property
    def on_ids(self) -> TokenIdAction:
        return TokenIdAction(self.group, self.permutations)

    @property
    def on_scores(self) -> ScoreAction:
        return ScoreAction(self.group, self.permutations)


def _validate_cycles(cycles: Any, key: str) -> tuple[tuple[str, ...], ...]:
    if not isinstance(cycles, (list, tuple)) or not cycles:
        raise GroupSpecError(f"{key} must be a non-empty list of word lists, e.g. [[jump, run]]; got {cycles!r}")
    seen: dict[str, int] = {}
    result = []
    for i, cycle in enumerate(cycles):
        if not isinstance(cycle, (list, tuple)) or len(cycle) < 2 or not all(isinstance(w, str) for w in cycle):
            raise GroupSpecError(f"{key}[{i}] must be a list of at least two words; got {cycle!r}")
        for word in cycle:
            if word in seen:
                raise GroupSpecError(f"{key}: word {word!r} appears twice (in set {seen[word]} and set {i}); "
                                     "each word may belong to one set only")
            seen[word] = i
        result.append(tuple(cycle))
    sizes = {len(c) for c in result}
    if len(sizes) != 1:
        raise GroupSpecError(f"{key}: all word sets must have the same size (one generator shifts them together); "
                             f"got sizes {[len(c) for c in result]}")
    return tuple(result)


@dataclass(frozen=True)
class WordCycles:
    """The cyclic group generated by shifting every word set by one place at once.

    ``cycles=[[walk, look, run, jump]]`` is the order-4 group sending walk->look->run->jump->walk;
    ``[[man, woman], [he, she]]`` is one swap applied to both sets. ``output_cycles`` (same shape) describes
    how the same group acts on a second vocabulary, e.g. SCAN's actions ``[[JUMP, RUN]]``.
    """

    cycles: tuple[tuple[str, ...], ...]
    output_cycles: tuple[tuple[str, ...], ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cycles", _validate_cycles(self.cycles, "cycles"))
        if self.output_cycles is not None:
            out = _validate_cycles(self.output_cycles, "output_cycles")
            if len(out[0]) != len(self.cycles[0]):
                raise GroupSpecError("output_cycles must have sets of the same size as cycles "
                                     f"({len(self.cycles[0])}); got {[len(c) for c in out]}")
            object.__setattr__(self, "output_cycles", out)

    @property
    def group(self) -> FiniteGroup:
        n = len(self.cycles[0])
        label = " ".join("(" + " ".join(c) + ")" for c in self.cycles)
        return _cyclic_group(f"cycles {label}", n)

    def bind(self, vocab: Sequence[str] | Mapping[str, int], vocab_size: int | None = None) -> VocabPermutation:
        """Bind the input cycles to a vocabulary (a list of words, or a word -> id mapping).

        ``vocab_size`` is the size of the id range / logits axis, by default the largest id + 1 (language models
        often pad their logits beyond the tokenizer's vocabulary)."""
        return _bind(self.group, self.cycles, vocab, vocab_size, "cycles")

    def bind_output(self, vocab: Sequence[str] | Mapping[str, int], vocab_size: int | None = None) -> VocabPermutation:
        """Bind the output cycles (or the input cycles when none were given) to an output vocabulary."""
        if self.output_cycles is None:
            return _bind(self.group, self.cycles, vocab, vocab_size, "output_cycles (none given, so the input cycles)")
        return _bind(self.group, self.output_cycles, vocab, vocab_size, "output_cycles")


def _word_to_id(vocab: Sequence[str] | Mapping[str, int], key: str) -> dict[str, int]:
    if isinstance(vocab, Mapping):
        return dict(vocab)
    word_to_id: dict[str, int] = {}
    for i, word in enumerate(vocab):
        if word in word_to_id:
            raise GroupSpecError(f"{key}: word {word!r} appears more than once in the vocabulary "
                                 f"(ids {word_to_id[word]} and {i}), so its token id is ambiguous")
        word_to_id[word] = i
    return word_to_id


def _bind(group: FiniteGroup, cycles, vocab, vocab_size: int | None, key: str) -> VocabPermutation:
    word_to_id = _word_to_id(vocab, key)
    largest = max(word_to_id.values()) + 1 if word_to_id else 0
    if vocab_size is None:
        vocab_size = largest
    elif vocab_size < largest:
        raise GroupSpecError(f"{key}: vocab_size={vocab_size} is smaller than the vocabulary's "
                             f"largest id + 1 ({largest})")
    missing = [w for c in cycles for w in c if w not in word_to_id]
    if missing:
        shown = sorted(word_to_id, key=word_to_id.get)
        sample = ", ".join(shown[:20]) + (", ..." if len(shown) > 20 else "")
        raise GroupSpecError(f"{key}: word(s) {missing} not in the vocabulary ({vocab_size} entries: {sample})")
    owners: dict[int, str] = {}
    for word in (w for c in cycles for w in c):
        token = word_to_id[word]
        if token in owners:
            raise GroupSpecError(f"{key}: words {owners[token]!r} and {word!r} share the token id {token}; "
                                 "a permutation of words needs one id per word")
        owners[token] = word
    n = group.order
    permutations = torch.arange(vocab_size).repeat(n, 1)
    for cycle in cycles:
        ids = [word_to_id[w] for w in cycle]
        for shift in range(n):
            for position, token in enumerate(ids):
                permutations[shift, token] = ids[(position + shift) % n]
    return VocabPermutation(group, permutations)


# ------------------------------------------------------------------------------------------------ specs
def parse_group_spec(spec: Any) -> ImageAction | WordCycles:
    """Build a group from its params form: an image group name or ``{cycles: [[...]], output_cycles: [[...]]}``."""
    allowed = f"an image group name ({', '.join(IMAGE_GROUPS)}) or a mapping {{cycles: [[word, word, ...], ...]}}"
    if isinstance(spec, str):
        if spec not in IMAGE_GROUPS:
            raise GroupSpecError(f"unknown group {spec!r}; allowed: {allowed}")
        return ImageAction(spec)
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"cycles", "output_cycles"}, key=str)
        if unknown:
            raise GroupSpecError(f"group spec {dict(spec)!r}: unknown key(s) {unknown}; "
                                 "allowed: 'cycles' and optionally 'output_cycles'")
        if "cycles" not in spec:
            raise GroupSpecError(f"group spec {dict(spec)!r}: missing the key 'cycles', e.g. {{cycles: [[jump, run]]}}")
        return WordCycles(spec["cycles"], spec.get("output_cycles"))
    raise GroupSpecError(f"group spec {spec!r} not understood; allowed: {allowed}")
