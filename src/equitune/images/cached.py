"""Fine-tuning on cached features: the frozen lower units run once per image and group element, shared by every
method and seed; only the upper units and the head are trained.

Every image group of the project is a subgroup of D4, so the cache holds, for each image ``x``, its **D4 orbit**
through the frozen part: ``z[:, e] = frozen(e . x)`` for the 8 elements ``e`` of D4 (``[N, 8, C, h, w]``, in the
element order of ``image_action("d4")``). One cache serves C4, D4 and the flips, the baselines (which read the
identity slot) and the augmentation baseline (which reads a random rotation's slot).

:class:`OrbitAction` is the action of an image group ``H`` on such orbit tensors. Moving the image moves its
orbit: ``frozen(e . (g . x)) = frozen((e g) . x)``, so ``(g . z)[:, e] = z[:, e g]``, a permutation of the slots;
this is exact (the pixels of ``e . (g . x)`` and ``(e g) . x`` are the same numbers). Its ``transform_all``
gives, for every ``h`` in ``H``, what the trainable part reads from ``h . z``: its identity slot ``z[:, h]`` =
``frozen(h . x)``. So ``EquiTune(trainable, OrbitAction(H))`` on the cached orbit computes exactly
``1/|H| sum_h trainable(frozen(h . x))``, the equituned classifier on the image, and
:func:`equitune.core.checks.assert_equivariant` checks its invariance under ``OrbitAction(H)`` element by element.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.groups import IMAGE_GROUPS, FiniteGroup, image_action
from ..pipeline.modes import eval_mode
from .data import to_model_input

__all__ = ["CACHE_GROUP", "IdentitySlot", "OrbitAction", "orbit_features"]

CACHE_GROUP = "d4"
"""The group whose orbits are cached: it contains every image group (c4, d4, hflip, vflip)."""

_CACHE_ELEMENTS = IMAGE_GROUPS[CACHE_GROUP]


class OrbitAction:
    """Image group ``name`` acting on cached D4 orbits ``z [B, 8, ...]`` (``z[:, e] = frozen(e . x)``)."""

    def __init__(self, name: str):
        action = image_action(name)  # unknown names fail here, with the allowed list
        self.group: FiniteGroup = action.group
        self.name = name
        cache_group = image_action(CACHE_GROUP).group
        elements = IMAGE_GROUPS[name]
        # slot of each element of H in the cache, and the slot permutation z -> g . z for each g in H
        self.slots = torch.tensor([_CACHE_ELEMENTS.index(e) for e in elements])
        self._permutations = [torch.tensor([cache_group.compose(e, int(self.slots[g])) for e in cache_group])
                              for g in self.group]

    def __repr__(self) -> str:
        return f"OrbitAction({self.name!r})"

    def _check(self, z: torch.Tensor) -> None:
        if z.dim() < 2 or z.shape[1] != len(_CACHE_ELEMENTS):
            raise ValueError(f"expected cached D4 orbits [B, {len(_CACHE_ELEMENTS)}, ...]; got shape {tuple(z.shape)}")

    def apply(self, z: torch.Tensor, g: int) -> torch.Tensor:
        """The orbit of ``g . x`` from the orbit of ``x``."""
        self._check(z)
        return z[:, self._permutations[g].to(z.device)]

    def apply_each(self, z: torch.Tensor, elements: torch.Tensor) -> torch.Tensor:
        """The orbit of ``g_b . x_b`` for each example ``b`` (``elements [B]``: one element of H per example)."""
        self._check(z)
        permutations = torch.stack(self._permutations).to(z.device)[elements.to(z.device)]  # [B, 8]
        return z[torch.arange(z.shape[0], device=z.device)[:, None], permutations]

    def transform_all(self, z: torch.Tensor) -> torch.Tensor:
        """``[|H|, B, ...]``: row ``h`` is the identity slot of ``h . z``, i.e. ``frozen(h . x)``."""
        self._check(z)
        return z[:, self.slots.to(z.device)].movedim(1, 0)

    def untransform_all(self, y: torch.Tensor) -> torch.Tensor:
        raise TypeError("OrbitAction acts on cached inputs only; the methods built on it are invariant classifiers")


class IdentitySlot(nn.Module):
    """A model on images, run on cached orbits: it reads the identity slot, ``frozen(x)``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.module(z[:, 0])


def orbit_features(frozen: nn.Module, images, resolution: int, chunk_elements: int = 32,
                   dtype: torch.dtype = torch.float32, progress: bool = False) -> torch.Tensor:
    """``[N, 8, ...]``: ``frozen(e . x)`` for every image and every element ``e`` of D4, in eval mode.

    ``images`` are uint8 ``[N, C, H, W]``, resized to ``resolution`` by :func:`to_model_input`, or a float tensor
    already prepared that way; then transformed (the resize commutes with the square-grid transforms). The frozen part sees small batches of about
    ``chunk_elements`` transformed images in channels-last layout: measured on 2 CPU cores, 32 elements per
    forward ran about 4x faster per image than 512 (activations that stay in cache); results are the same."""
    from tqdm import tqdm

    action = image_action(CACHE_GROUP)
    order = action.group.order
    per_chunk = max(1, chunk_elements // order)
    outputs = []
    for start in tqdm(range(0, len(images), per_chunk), desc="caching orbits", disable=None if progress else True,
                      leave=False):
        chunk = images[start:start + per_chunk]
        floats = isinstance(chunk, torch.Tensor) and chunk.is_floating_point()
        x = (chunk if floats else to_model_input(chunk, resolution)).to(dtype)
        stacked = action.transform_all(x)  # [8, B, C, H, W]
        flat = stacked.reshape(-1, *stacked.shape[2:])
        if flat.shape[1] == 1:
            flat = flat.expand(-1, 3, -1, -1)  # grey -> 3 channels before the channels-last copy (Normalise would)
        with eval_mode(frozen), torch.inference_mode():
            y = frozen(flat.contiguous(memory_format=torch.channels_last))
        outputs.append(y.reshape(order, len(x), *y.shape[1:]).transpose(0, 1).contiguous())
    if not outputs:
        raise ValueError("no images to cache")
    return torch.cat(outputs)  # made outside inference mode: a normal tensor, usable in autograd later


SPLITS = ("train", "validation", "test")


def cache_description(backbone: str, resolution: int, trainable_depth: int | str, pretrained: bool) -> dict:
    """What a cache was computed for: a cell refuses a cache that does not match its params."""
    return {"backbone": backbone, "resolution": resolution, "trainable_depth": trainable_depth,
            "pretrained": pretrained, "group": CACHE_GROUP}


def build_cache(frozen: nn.Module | None, data: dict, resolution: int, description: dict,
                progress: bool = False) -> dict:
    """The cache file's content: ``description`` and, unless the whole network is trained (``frozen`` None), the
    D4 orbits of every split through ``frozen``."""
    content: dict = {"description": description}
    if frozen is not None:
        frozen.to(memory_format=torch.channels_last)  # the layout the small batches run fastest in (speed only)
        for split in SPLITS:
            content[split] = orbit_features(frozen, data[f"{split}_x"], resolution, progress=progress)
    return content


def load_cache(path, description: dict) -> dict[str, torch.Tensor]:
    """The cached orbits of each split; a :class:`DataError` if the file is missing or was built for other params."""
    from pathlib import Path

    from ..core.errors import DataError

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} not found; run `dvc repro` for the images cache stage first")
    content = torch.load(path, map_location="cpu", weights_only=True)
    if content.get("description") != description:
        raise DataError(f"{path} was built for {content.get('description')}, not for {description}; rerun its "
                        f"cache stage (`dvc repro`)")
    missing = [s for s in SPLITS if s not in content]
    if missing:
        raise DataError(f"{path} holds no cached orbits for {missing} (built with trainable_depth 'all'?)")
    return {split: content[split] for split in SPLITS}
