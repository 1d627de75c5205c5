"""Schema of the `images:` section of params.yaml: data, grid, training, evaluation and figures.

The grid is split in two so that DVC never trains the same model twice: the baseline methods (``finetune``,
``finetune_augment``) ignore the group and run once per backbone and seed (their group is ``trivial``), the
group methods run once per backbone, group and seed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, field_validator, model_validator

from ..pipeline.schema import StrictModel, UniqueList

__all__ = [
    "BASELINE_METHODS",
    "BACKBONE_NAMES",
    "BACKBONE_UNITS",
    "CANONICALIZATION_METHODS",
    "DATASET_NAMES",
    "GCNN_GROUP_NAMES",
    "GROUP_METHODS",
    "SCRATCH_METHODS",
    "IMAGE_GROUP_NAMES",
    "ImagesParams",
    "METHOD_NAMES",
]

DATASET_NAMES = ("fashion_mnist", "cifar10", "hymenoptera")
BACKBONE_NAMES = ("efficientnet_lite0", "alexnet", "resnet18", "vgg11_bn", "densenet121")
BACKBONE_UNITS = {"efficientnet_lite0": 18, "alexnet": 1, "resnet18": 1, "vgg11_bn": 1, "densenet121": 1}
"""Units of each backbone's trunk, what ``images.train.trainable_depth`` counts (see
:mod:`equitune.images.backbones`; a test checks these counts against the built networks). Known without building a
network, so that a depth outside the backbone is rejected when params are read, before any work."""
BASELINE_METHODS = ("finetune", "finetune_augment")
CANONICALIZATION_METHODS = ("frame", "canonicalize", "canonicalize_prior")
"""Group methods that average over a frame chosen per input by scores of its transformed copies
(:mod:`equitune.images.canonical`): a fixed score (``frame``) or a learned one (``canonicalize``, and
``canonicalize_prior`` with Mondal et al.'s prior towards the identity)."""
SCRATCH_METHODS = ("gcnn",)
"""Group methods that train their own network from scratch on the raw images (no backbone, no cache): the steerable
G-CNN baseline (:mod:`equitune.images.gcnn`), settings under ``images.train.gcnn``."""
GCNN_GROUP_NAMES = ("c4", "d4")
GROUP_METHODS = ("equitune", "lambda_equitune", "equizero", *CANONICALIZATION_METHODS, *SCRATCH_METHODS)
METHOD_NAMES = BASELINE_METHODS + GROUP_METHODS
IMAGE_GROUP_NAMES = ("c4", "d4", "hflip", "vflip")


# The grid's names as types: a name outside them is rejected with the allowed ones listed.
DatasetName = Literal[DATASET_NAMES]  # type: ignore[valid-type]
BackboneName = Literal[BACKBONE_NAMES]  # type: ignore[valid-type]
BaselineMethod = Literal[BASELINE_METHODS]  # type: ignore[valid-type]
GroupMethod = Literal[GROUP_METHODS]  # type: ignore[valid-type]
ImageGroupName = Literal[IMAGE_GROUP_NAMES]  # type: ignore[valid-type]


class ImagesData(StrictModel):
    """Where the images come from and how much of them is used."""

    train_size: int | None = Field(..., ge=1, description="training images drawn from the training split (null: all that remain after validation)")
    validation_size: int | float = Field(..., gt=0, description="validation images carved from the training split "
                                         "(model selection; never the test split): a count, or a fraction of the training split when below 1")
    test_size: int | None = Field(..., ge=1, description="test images drawn from the test split (null: all)")
    subset_seed: int = Field(0, ge=0, description="seed of the stratification-free random subset and of the train/validation split")
    fashion_mnist_dir: str = Field("/usr/share/datasets/fashion-mnist", description="folder of the Debian package dataset-fashion-mnist")
    download_dir: str = Field("data/images/downloads", description="where official downloads are kept (verified by sha256)")
    allow_download: bool = Field(True, description="fall back to the official download when no local copy exists")
    hymenoptera_size: int = Field(224, ge=8, description="square size Hymenoptera photos are resized+cropped to when prepared")
    cifar10_url: str = Field("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                             description="where CIFAR-10 is downloaded from (http or https: torchvision's downloader) "
                             "unless download_dir holds a copy whose md5 verifies")
    hymenoptera_url: str = Field("https://download.pytorch.org/tutorial/hymenoptera_data.zip",
                                 description="where Hymenoptera is downloaded from unless download_dir holds the zip "
                                 "(a mirror, or file:///path/to/hymenoptera_data.zip)")
    fixture_checksums: str | None = Field(None, description="offline smoke test only: a JSON file of the checksums of "
                                          "its tiny archives (official formats, other content); null: the official "
                                          "checksums (every real run)")


class ImagesGrid(StrictModel):
    """The matrix of the tune stages (lists read by dvc.yaml; every cell is checked against them)."""

    datasets: UniqueList[DatasetName] = Field(min_length=1)
    backbones: UniqueList[BackboneName] = Field(min_length=1)
    baseline_methods: UniqueList[BaselineMethod] = Field(min_length=1)
    group_methods: UniqueList[GroupMethod] = Field(min_length=1)
    groups: UniqueList[ImageGroupName] = Field(min_length=1)
    seeds: UniqueList[NonNegativeInt] = Field(min_length=1)


class ImagesGcnn(StrictModel):
    """The from-scratch steerable G-CNN (method ``gcnn``); batch size, momentum, weight decay and schedule are
    ``images.train``'s. Its batch norm trains on batch statistics (there are no pretrained ones to keep)."""

    channels: list[int] = Field([16, 32, 32], min_length=1, description="output channels of each steerable "
                                "layer: regular fields of |G| channels, so multiples of 8 (D4's order)")
    epochs: int = Field(1, ge=1, description="passes over the training images (best epoch on validation)")
    lr: float = Field(0.05, gt=0, description="learning rate (every parameter is new)")

    @field_validator("channels")
    @classmethod
    def _channels(cls, v):
        if any(c < 8 or c % 8 for c in v):
            raise ValueError(f"images.train.gcnn.channels must be multiples of 8 (regular fields of D4); got {v}")
        return v


class ImagesTrain(StrictModel):
    """Optimizer and schedule: SGD with momentum, as in the paper."""

    pretrained: bool = Field(True, description="start from ImageNet weights (false: random init, for tests only)")
    epochs: int = Field(..., ge=1)
    batch_size: int = Field(..., ge=1)
    lr: float = Field(..., gt=0, description="learning rate of the pretrained backbone")
    head_lr: float | None = Field(None, gt=0, description="learning rate of the new parts (head, lambda MLP); null: lr")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    freeze_batchnorm: bool = Field(True, description="keep batch-norm layers on their ImageNet running statistics while training")
    trainable_depth: int | Literal["all"] = Field(
        "all", description="trunk units trained, counted from the top (plus the new head): 'all' trains the whole "
        "network on images transformed on the fly (the paper); n freezes the lower units and caches their outputs "
        "once per image and D4 element, shared by every method and seed (0: a linear probe)")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="per-step learning rate: constant, "
                                                       "or cosine decay to 0 over the run")
    lambda_hidden: int = Field(100, ge=1, description="hidden width of lambda-equitune's MLP (features -> h -> h -> 1)")
    equizero_proxy: Literal["entropy", "max_prob"] = "entropy"
    canonicalization_prior_weight: float = Field(
        1.0, ge=0, description="weight of Mondal et al.'s prior loss (cross-entropy of the canonicalizer's softmax "
        "with the identity on the upright training images) in canonicalize_prior; 0 makes it canonicalize")
    mixed_precision: bool = Field(False, description="bfloat16/float16 autocast on CUDA (ignored on CPU)")
    gcnn: ImagesGcnn = ImagesGcnn()


class ImagesEvaluation(StrictModel):
    rotation_seed: int = Field(1234, ge=0, description="seed of the random test-image rotations (the paper's metric)")
    invariance_batch: int = Field(32, ge=1, description="test images used to measure the invariance error")
    batch_size: int = Field(128, ge=1)


class ImagesFigures(StrictModel):
    feature_image_index: int = Field(0, ge=0, description="test image shown in the feature visualisation")
    feature_channels: int = Field(4, ge=1, le=16, description="feature-map channels drawn per frame")
    feature_resolution: int = Field(64, ge=32, description="input size for the feature visualisation (larger = more visible maps)")


class ImagesParams(StrictModel):
    """The image classification experiment (paper section 3.1)."""

    resolution: int = Field(..., ge=8, description="square input size of the backbone (images are resized on the fly)")
    data: ImagesData
    grid: ImagesGrid
    train: ImagesTrain
    evaluation: ImagesEvaluation = ImagesEvaluation()
    figures: ImagesFigures = ImagesFigures()

    @model_validator(mode="after")
    def _depth_fits_backbones(self):
        depth = self.train.trainable_depth
        if depth == "all":
            return self
        if depth < 0:
            raise ValueError(f"images.train.trainable_depth={depth} is negative; use 0..units of the backbone or 'all'")
        too_deep = {b: BACKBONE_UNITS[b] for b in self.grid.backbones if depth > BACKBONE_UNITS[b]}
        if too_deep:
            units = ", ".join(f"{b} has {n}" for b, n in too_deep.items())
            raise ValueError(f"images.train.trainable_depth={depth} is outside the backbone ({units} unit(s)); use "
                             f"0..{min(too_deep.values())} (frozen lower units, cached) or 'all'")
        return self

    @model_validator(mode="after")
    def _gcnn_groups(self):
        other = [g for g in self.grid.groups if g not in GCNN_GROUP_NAMES]
        if any(m in SCRATCH_METHODS for m in self.grid.group_methods) and other:
            raise ValueError(f"images.grid.groups {other}: the gcnn method (images.grid.group_methods) is built for "
                             f"{', '.join(GCNN_GROUP_NAMES)} only; drop those groups or the method")
        side = 2 ** len(self.train.gcnn.channels)  # the input pool and the pools between layers halve even sides
        if any(m in SCRATCH_METHODS for m in self.grid.group_methods) and self.resolution % side:
            raise ValueError(f"images.resolution={self.resolution} must be divisible by {side} for the gcnn method "
                             f"(images.train.gcnn.channels has {len(self.train.gcnn.channels)} layers; each 2x2 pool "
                             "must halve an even size to commute with the quarter turns)")
        return self

    @model_validator(mode="after")
    def _grid_fits_data(self):
        size = self.data.validation_size
        if isinstance(size, float) and not size < 1:
            raise ValueError(f"images.data.validation_size={size}: a float must be a fraction below 1 (or give a count)")
        if "hymenoptera" in self.grid.datasets and self.data.hymenoptera_size < self.resolution:
            raise ValueError(
                f"images.data.hymenoptera_size ({self.data.hymenoptera_size}) must be >= images.resolution "
                f"({self.resolution}): photos would be upsampled twice"
            )
        return self
