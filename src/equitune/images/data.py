"""Image data sources, verified: Fashion-MNIST (offline Debian package, else the official download), CIFAR-10 and
Hymenoptera (online, paper profile); the train/validation/test subsets the experiment uses.

Fashion-MNIST is verified by the sha256 of the *decompressed* IDX files: Debian re-gzips the official files, so
the .gz bytes differ while the content is the same. A corrupted file is rejected with a clear error; a download
that fails or does not verify is removed, never left half-written under its final name.

Prepared data is a dict of uint8 arrays ``{train,validation,test}_{x,y}`` with images ``[N, C, H, W]``; the validation
split is carved from the training split (model selection never sees the test split).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..core.errors import DataError

__all__ = [
    "CIFAR10_URL",
    "DataError",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_URL",
    "HYMENOPTERA_URL",
    "cifar10_arrays",
    "fashion_mnist_arrays",
    "hymenoptera_arrays",
    "prepare_dataset",
    "read_fixture_checksums",
    "read_idx",
    "split_subsets",
    "to_model_input",
    "verified_idx",
]


FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES: dict[str, str] = {
    # file name -> sha256 of the decompressed IDX bytes (official release = Debian dataset-fashion-mnist content)
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
# The tutorial archive's content: split -> class -> number of JPEG images.
HYMENOPTERA_COUNTS = {"train": {"ants": 124, "bees": 121}, "val": {"ants": 70, "bees": 83}}

Opener = Callable[..., object]  # urllib.request.urlopen-compatible: opener(url, timeout=...) -> readable response


# --------------------------------------------------------------------------------------------- IDX files
def read_idx(raw: bytes) -> np.ndarray:
    """Decode an IDX file (uint8 payload): magic 0x0000 08 <ndim>, then ndim big-endian sizes, then the data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError("not an uint8 IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    payload = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise DataError(f"IDX payload has {payload.size} bytes, header says {shape}")
    return payload.reshape(shape)


def verified_idx(path: Path, expected_sha256: str) -> np.ndarray:
    """Decompress ``path``, check the sha256 of the content, decode it; a clear :class:`DataError` otherwise."""
    try:
        raw = gzip.decompress(Path(path).read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: corrupted (cannot decompress: {error}); delete it and fetch it again") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected_sha256:
        raise DataError(
            f"{path}: corrupted or not the official Fashion-MNIST file (sha256 of the decompressed content is "
            f"{digest}, expected {expected_sha256}); delete it and fetch it again"
        )
    return read_idx(raw)


def _download(url: str, target: Path, opener: Opener, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``target`` through a temporary file; nothing is left behind on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as sink, opener(url, timeout=timeout) as response:  # type: ignore[operator]
            shutil.copyfileobj(response, sink)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fashion_mnist_file(name: str, local_dir: Path, download_dir: Path, allow_download: bool, opener: Opener) -> np.ndarray:
    expected = FASHION_MNIST_FILES[name]
    local = local_dir / name
    if local.exists():
        return verified_idx(local, expected)  # a corrupted system copy is an error, never silently replaced
    cached = download_dir / name
    if cached.exists():
        try:
            return verified_idx(cached, expected)
        except DataError:
            cached.unlink()  # our own earlier download went bad: fetch it again below
    if not allow_download:
        raise DataError(
            f"Fashion-MNIST not found: {local} does not exist and images.data.allow_download is false. Either "
            f"install the Debian package (sudo apt-get install dataset-fashion-mnist) or allow the official "
            f"download from {FASHION_MNIST_URL} (needs internet)"
        )
    try:
        _download(FASHION_MNIST_URL + name, cached, opener)
    except OSError as error:
        raise DataError(
            f"Fashion-MNIST not found locally ({local} does not exist) and the official download of "
            f"{FASHION_MNIST_URL + name} failed ({error}). Either install the Debian package "
            f"(sudo apt-get install dataset-fashion-mnist, see scripts/setup.sh) or run with internet access"
        ) from None
    try:
        return verified_idx(cached, expected)
    except DataError:
        cached.unlink()  # a download that does not verify is removed
        raise


def fashion_mnist_arrays(local_dir: str | Path, download_dir: str | Path, allow_download: bool = True,
                         opener: Opener = urllib.request.urlopen) -> dict[str, np.ndarray]:
    """The full verified Fashion-MNIST: ``train_x [60000, 1, 28, 28]``, ``train_y``, ``test_x``, ``test_y``."""
    local_dir, download_dir = Path(local_dir), Path(download_dir)
    get = lambda name: _fashion_mnist_file(name, local_dir, download_dir, allow_download, opener)  # noqa: E731
    return {
        "train_x": get("train-images-idx3-ubyte.gz")[:, None],
        "train_y": get("train-labels-idx1-ubyte.gz").astype(np.int64),
        "test_x": get("t10k-images-idx3-ubyte.gz")[:, None],
        "test_y": get("t10k-labels-idx1-ubyte.gz").astype(np.int64),
    }


# --------------------------------------------------------------------------------------------- online sources
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def read_fixture_checksums(path: str | Path | None) -> dict:
    """The replacement checksums of ``images.data.fixture_checksums`` (a JSON file), or ``{}`` for the official
    ones. Only the offline smoke test sets it: its tiny archives are in the official formats but cannot have the
    official checksums; the loading code is otherwise the same."""
    if path is None:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"images.data.fixture_checksums: cannot read {path} ({error}); use null for the official "
                        "checksums") from None


def _cifar10_class(url: str, checksums: dict):
    """torchvision's CIFAR10 with the archive fetched from ``url`` and, for a test fixture, other checksums."""
    from torchvision.datasets import CIFAR10

    attributes: dict = {"url": url}
    if checksums:
        files = checksums["files"]
        attributes.update(
            tgz_md5=checksums["archive_md5"],
            train_list=[[name, files[name]] for name, _ in CIFAR10.train_list],
            test_list=[[name, files[name]] for name, _ in CIFAR10.test_list],
            meta={**CIFAR10.meta, "md5": files[CIFAR10.meta["filename"]]},
        )
    return type("CIFAR10FromSource", (CIFAR10,), attributes)


def cifar10_arrays(download_dir: str | Path, url: str = CIFAR10_URL, checksums: dict | None = None
                   ) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """CIFAR-10 through torchvision, which downloads ``url`` into ``download_dir`` unless a copy whose md5
    verifies is already there, checks the archive's and every batch file's md5, and extracts it."""
    dataset = _cifar10_class(url, checksums or {})
    archive = Path(download_dir) / dataset.filename
    try:
        train = dataset(str(download_dir), train=True, download=True)
        test = dataset(str(download_dir), train=False, download=True)
    except (OSError, RuntimeError) as error:
        raise DataError(
            f"CIFAR-10: could not download or verify {url} ({type(error).__name__}: {error}). Without internet, "
            f"download {CIFAR10_URL} (163 MB, md5 {dataset.tgz_md5}) elsewhere and put it at {archive}: the stage "
            f"verifies and extracts it; or set images.data.cifar10_url to a mirror (http or https)"
        ) from None
    arrays = {
        "train_x": np.ascontiguousarray(train.data.transpose(0, 3, 1, 2)),
        "train_y": np.asarray(train.targets, dtype=np.int64),
        "test_x": np.ascontiguousarray(test.data.transpose(0, 3, 1, 2)),  # the test split, never the training one
        "test_y": np.asarray(test.targets, dtype=np.int64),
    }
    return arrays, tuple(train.classes)


def _square_crop(image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop a square (the tutorial's eval transform at 224)."""
    from PIL import Image

    width, height = image.size
    scale = size / min(width, height)
    image = image.convert("RGB").resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BILINEAR)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


def hymenoptera_arrays(download_dir: str | Path, size: int, opener: Opener = urllib.request.urlopen,
                       url: str = HYMENOPTERA_URL, checksums: dict | None = None
                       ) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The ants-vs-bees tutorial set, fetched from ``url`` unless ``download_dir`` already holds the zip, verified
    by the zip's CRCs and the known image counts (a test fixture's ``checksums`` give its own counts); its ``val``
    split is the test split (validation for model selection is carved from ``train`` like for the other sets)."""
    from PIL import Image

    counts = (checksums or {}).get("counts", HYMENOPTERA_COUNTS)
    archive = Path(download_dir) / "hymenoptera_data.zip"
    if not archive.exists():
        try:
            _download(url, archive, opener)
        except OSError as error:
            raise DataError(
                f"Hymenoptera: could not download {url} ({type(error).__name__}: {error}). Without internet, "
                f"download {HYMENOPTERA_URL} elsewhere and put it at {archive}; or set "
                f"images.data.hymenoptera_url to a mirror or a local copy (file:///path/to/hymenoptera_data.zip)"
            ) from None
    classes = ("ants", "bees")
    arrays: dict[str, list] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    try:
        with zipfile.ZipFile(archive) as zf:
            broken = zf.testzip()
            if broken is not None:
                raise DataError(f"{archive}: corrupted member {broken}; delete the file and run again")
            for split, prefix in (("train", "train"), ("val", "test")):
                for label, cls in enumerate(classes):
                    names = sorted(n for n in zf.namelist() if n.startswith(f"hymenoptera_data/{split}/{cls}/")
                                   and n.lower().endswith((".jpg", ".jpeg")))
                    if len(names) != counts[split][cls]:
                        raise DataError(f"{archive}: {split}/{cls} has {len(names)} images, expected "
                                        f"{counts[split][cls]}; not the official archive (delete it and run again)")
                    for name in names:
                        with zf.open(name) as handle:
                            arrays[f"{prefix}_x"].append(_square_crop(Image.open(handle), size))
                        arrays[f"{prefix}_y"].append(label)
    except zipfile.BadZipFile:
        archive.unlink()
        raise DataError(f"{archive}: not a valid zip (corrupted download, removed); run again") from None
    return ({k: np.stack(v) if k.endswith("_x") else np.asarray(v, dtype=np.int64) for k, v in arrays.items()}, classes)


# --------------------------------------------------------------------------------------------- subsets
def split_subsets(full: dict[str, np.ndarray], train_size: int | None, validation_size: int | float, test_size: int | None,
                  seed: int) -> dict[str, np.ndarray]:
    """Carve validation from the training split, then draw the train/test subsets, with one seeded permutation.
    ``validation_size`` is a count, or a fraction of the training split when it is a float below 1."""
    rng = np.random.default_rng(seed)
    n_train = len(full["train_y"])
    if isinstance(validation_size, float):
        validation_size = max(1, round(validation_size * n_train))
    if validation_size >= n_train:
        raise DataError(f"images.data.validation_size={validation_size} leaves no training images (training split has {n_train})")
    order = rng.permutation(n_train)
    validation_idx = order[:validation_size]
    rest = order[validation_size:]
    if train_size is not None and train_size > len(rest):
        raise DataError(f"images.data.train_size={train_size} exceeds the {len(rest)} training images left after validation")
    train_idx = rest if train_size is None else rest[:train_size]
    n_test = len(full["test_y"])
    if test_size is not None and test_size > n_test:
        raise DataError(f"images.data.test_size={test_size} exceeds the test split ({n_test} images)")
    test_idx = np.sort(rng.permutation(n_test)[:test_size]) if test_size is not None else np.arange(n_test)
    return {
        "train_x": full["train_x"][np.sort(train_idx)], "train_y": full["train_y"][np.sort(train_idx)],
        "validation_x": full["train_x"][np.sort(validation_idx)], "validation_y": full["train_y"][np.sort(validation_idx)],
        "test_x": full["test_x"][test_idx], "test_y": full["test_y"][test_idx],
    }


def prepare_dataset(name: str, data_params, opener: Opener = urllib.request.urlopen
                    ) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The subsets of dataset ``name`` described by ``images.data`` params, and the class names."""
    if name == "fashion_mnist":
        full = fashion_mnist_arrays(data_params.fashion_mnist_dir, data_params.download_dir, data_params.allow_download, opener)
        classes = FASHION_MNIST_CLASSES
    elif name == "cifar10":
        checksums = read_fixture_checksums(data_params.fixture_checksums).get("cifar10")
        full, classes = cifar10_arrays(data_params.download_dir, data_params.cifar10_url, checksums)
    elif name == "hymenoptera":
        checksums = read_fixture_checksums(data_params.fixture_checksums).get("hymenoptera")
        full, classes = hymenoptera_arrays(data_params.download_dir, data_params.hymenoptera_size, opener,
                                           data_params.hymenoptera_url, checksums)
    else:
        raise DataError(f"unknown image dataset {name!r}; allowed: fashion_mnist, cifar10, hymenoptera")
    subsets = split_subsets(full, data_params.train_size, data_params.validation_size, data_params.test_size, data_params.subset_seed)
    return subsets, tuple(classes)


def to_model_input(images: np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 in [0, 1] at ``resolution`` x ``resolution`` (bilinear, square grid, so it
    commutes with the 90-degree rotations and flips applied afterwards)."""
    x = torch.as_tensor(images).float().div_(255.0)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return x
