"""Feature visualisation: backbone feature maps of the pretrained and of the equituned model for one test image
rotated step by step by 90 degrees.

The equituned feature extractor is ``EquiTune(feature_maps, c4, output_action=c4)``: the maps of the four rotated
copies are rotated back by g^-1 and averaged, which makes them rotate along with the input (equivariant). The
pretrained maps are not equivariant (strided convolutions with asymmetric "same" padding, learned filters), so they
change in other ways than the input does. :func:`equivariance_error` measures both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.checks import equivariance_error
from ..core.errors import ConfigError
from ..core.groups import image_action
from ..core.wrappers import EquiTune
from .backbones import build_classifier
from .config import ImagesParams
from .data import to_model_input

__all__ = ["dataset_feature_frames", "equituned_feature_maps", "feature_frames", "save_feature_figures"]


def equituned_feature_maps(feature_maps: nn.Module, group: str = "c4") -> EquiTune:
    action = image_action(group)
    return EquiTune(feature_maps, action, output_action=action)


@torch.no_grad()
def feature_frames(feature_maps: nn.Module, image: torch.Tensor, channels: int) -> dict:
    """For each quarter turn of ``image [1, C, H, W]``: the input, and ``channels`` maps of both extractors.

    The channels shown are the most active ones of the pretrained extractor on the upright image (fixed for all
    frames). Also returns both extractors' measured equivariance errors (max abs, float32)."""
    feature_maps.eval()
    equituned = equituned_feature_maps(feature_maps).eval()
    action = image_action("c4")
    upright = feature_maps(image)[0]
    chosen = upright.flatten(1).abs().mean(dim=1).topk(channels).indices
    frames = []
    for k in range(4):
        rotated = torch.rot90(image, k, dims=(-2, -1))
        frames.append({
            "image": rotated[0].mean(dim=0).numpy(),
            "pretrained": feature_maps(rotated)[0, chosen].numpy(),
            "equituned": equituned(rotated)[0, chosen].numpy(),
        })
    errors = {
        "pretrained_feature_equivariance_error": equivariance_error(feature_maps, action, image, output_action=action),
        "equituned_feature_equivariance_error": equivariance_error(equituned, action, image, output_action=action),
    }
    return {"frames": frames, "channels": chosen.tolist(), "errors": errors}


def dataset_feature_frames(params: ImagesParams, data: dict[str, np.ndarray], classes: tuple[str, ...]) -> tuple[dict, dict]:
    """The frames of ``params.figures``'s test image for the first backbone of the grid, and their summary."""
    figures = params.figures
    if figures.feature_image_index >= len(data["test_y"]):
        raise ConfigError(f"images.figures.feature_image_index={figures.feature_image_index} is beyond the "
                          f"{len(data['test_y'])} prepared test images")
    backbone = params.grid.backbones[0]
    classifier = build_classifier(backbone, len(classes), figures.feature_resolution, pretrained=params.train.pretrained)
    index = figures.feature_image_index
    image = to_model_input(data["test_x"][index:index + 1], figures.feature_resolution)
    result = feature_frames(classifier.feature_maps, image, figures.feature_channels)
    summary = {"backbone": backbone, "image_index": index, "label": classes[int(data["test_y"][index])],
               "channels": result["channels"], **result["errors"]}
    return result, summary


def _draw(frames: list[dict], channels: int, upto: int | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = frames if upto is None else frames[upto:upto + 1]
    rows = 1 + 2 * channels
    fig, axes = plt.subplots(rows, len(shown), figsize=(1.6 * len(shown) + 1.4, 1.25 * rows), squeeze=False)
    # One colour scale per channel across all frames and both extractors, so changes are visible.
    scales = [max(float(np.abs(f[kind][c]).max()) for f in frames for kind in ("pretrained", "equituned")) or 1.0
              for c in range(channels)]
    for col, frame in enumerate(shown):
        angle = 90 * (col if upto is None else upto)
        axes[0, col].imshow(frame["image"], cmap="gray")
        axes[0, col].set_title(f"input, {angle} deg", fontsize=8)
        for c in range(channels):
            for offset, kind in ((1, "pretrained"), (1 + channels, "equituned")):
                axes[offset + c, col].imshow(frame[kind][c], cmap="magma", vmin=0 if frame[kind][c].min() >= 0 else -scales[c],
                                             vmax=scales[c])
    for row in range(rows):
        for col in range(len(shown)):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
        if row:
            kind = "pretrained" if row <= channels else "equituned"
            axes[row, 0].set_ylabel(f"{kind}\nch {(row - 1) % channels}", fontsize=7)
    fig.tight_layout()
    return fig, plt


def save_feature_figures(result: dict, png_path: str | Path, gif_path: str | Path) -> None:
    """A static strip (columns = rotations) as PNG and an animated GIF (one frame per rotation), both atomic."""
    import imageio.v2 as imageio

    from ..pipeline.io import atomic_path

    channels = len(result["channels"])
    fig, plt = _draw(result["frames"], channels)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    images = []
    for k in range(len(result["frames"])):
        fig, plt = _draw(result["frames"], channels, upto=k)
        fig.canvas.draw()
        images.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
        plt.close(fig)
    with atomic_path(gif_path) as tmp:
        imageio.mimsave(tmp, images, format="GIF", duration=800, loop=0)
