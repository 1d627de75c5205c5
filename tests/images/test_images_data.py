"""Image data sources: IDX decoding, checksum verification of decompressed content, downloads through a mocked
transport (success, corruption, failure mid-stream, no source at all), and the train/validation/test split."""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from equitune.images import data as image_data
from equitune.images.data import DataError, read_idx, split_subsets, verified_idx

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_round_trip_and_bad_magic():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(idx_bytes(array)), array)
    with pytest.raises(DataError, match="magic"):
        read_idx(b"\x00\x00\x09\x01" + b"\x00" * 8)


def test_verified_idx_accepts_matching_content_and_rejects_corruption(tmp_path):
    raw = idx_bytes(np.arange(10, dtype=np.uint8))
    good = tmp_path / "labels.gz"
    good.write_bytes(gzip.compress(raw))
    digest = hashlib.sha256(raw).hexdigest()
    assert verified_idx(good, digest).tolist() == list(range(10))
    flipped = bytearray(raw)
    flipped[-1] ^= 0xFF
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(bytes(flipped)))
    with pytest.raises(DataError, match="corrupted.*sha256"):
        verified_idx(bad, digest)
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(good.read_bytes()[:-6])
    with pytest.raises(DataError, match="corrupted"):
        verified_idx(truncated, digest)


@pytest.mark.skipif(not DEBIAN_DIR.exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_reference_hashes_match_the_installed_fashion_mnist_test_split():
    labels = verified_idx(DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz", image_data.FASHION_MNIST_FILES["t10k-labels-idx1-ubyte.gz"])
    images = verified_idx(DEBIAN_DIR / "t10k-images-idx3-ubyte.gz", image_data.FASHION_MNIST_FILES["t10k-images-idx3-ubyte.gz"])
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10


# ------------------------------------------------------------------ downloads through a mocked transport
FAKE = {  # tiny stand-ins for the four official files
    "train-images-idx3-ubyte.gz": np.random.default_rng(0).integers(0, 255, (20, 28, 28)),
    "train-labels-idx1-ubyte.gz": np.arange(20) % 10,
    "t10k-images-idx3-ubyte.gz": np.random.default_rng(1).integers(0, 255, (10, 28, 28)),
    "t10k-labels-idx1-ubyte.gz": np.arange(10) % 10,
}


class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes, fail_after: int | None = None):
        super().__init__(payload)
        self.fail_after = fail_after

    def read(self, size=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer (mocked)")
        return super().read(size if self.fail_after is None else min(size if size > 0 else 1 << 20, 64))


class FakeServer:
    """urlopen stand-in: serves the FAKE files, optionally corrupted or failing mid-stream; records the URLs."""

    def __init__(self, corrupt: bool = False, fail_after: int | None = None, unreachable: bool = False):
        self.corrupt, self.fail_after, self.unreachable, self.urls = corrupt, fail_after, unreachable, []

    def __call__(self, url, timeout=None):
        self.urls.append(url)
        if self.unreachable:
            raise OSError("Name or service not known (mocked)")
        raw = idx_bytes(FAKE[url.rsplit("/", 1)[1]])
        if self.corrupt:
            raw = raw[:-1] + bytes([raw[-1] ^ 0xFF])
        return FakeResponse(gzip.compress(raw, mtime=0), self.fail_after)


@pytest.fixture
def fake_hashes(monkeypatch):
    hashes = {name: hashlib.sha256(idx_bytes(a)).hexdigest() for name, a in FAKE.items()}
    monkeypatch.setattr(image_data, "FASHION_MNIST_FILES", hashes)
    return hashes


def test_download_fetches_the_official_urls_and_verifies(tmp_path, fake_hashes):
    server = FakeServer()
    arrays = image_data.fashion_mnist_arrays(tmp_path / "absent", tmp_path / "dl", True, opener=server)
    assert arrays["train_x"].shape == (20, 1, 28, 28) and arrays["test_y"].tolist() == FAKE["t10k-labels-idx1-ubyte.gz"].tolist()
    assert sorted(server.urls) == sorted(image_data.FASHION_MNIST_URL + n for n in FAKE)
    assert all(u.startswith("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/") for u in server.urls)
    # A second call uses the verified downloads and does not touch the network.
    again = FakeServer(unreachable=True)
    image_data.fashion_mnist_arrays(tmp_path / "absent", tmp_path / "dl", True, opener=again)
    assert again.urls == []


def test_corrupted_download_is_rejected_and_removed(tmp_path, fake_hashes):
    with pytest.raises(DataError, match="corrupted"):
        image_data.fashion_mnist_arrays(tmp_path / "absent", tmp_path / "dl", True, opener=FakeServer(corrupt=True))
    assert list((tmp_path / "dl").iterdir()) == []


def test_download_failing_mid_stream_leaves_no_partial_file(tmp_path, fake_hashes):
    with pytest.raises(DataError, match="download .* failed"):
        image_data.fashion_mnist_arrays(tmp_path / "absent", tmp_path / "dl", True, opener=FakeServer(fail_after=100))
    assert list((tmp_path / "dl").iterdir()) == []


def test_corrupted_local_copy_is_an_error_not_silently_replaced(tmp_path, fake_hashes):
    local = tmp_path / "debian"
    local.mkdir()
    for name, array in FAKE.items():
        (local / name).write_bytes(gzip.compress(idx_bytes(array)))
    (local / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(FAKE["train-labels-idx1-ubyte.gz"] + 1)))
    server = FakeServer()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: corrupted"):
        image_data.fashion_mnist_arrays(local, tmp_path / "dl", True, opener=server)
    assert server.urls == []


@pytest.mark.parametrize("allow_download", [True, False])
def test_no_source_names_both_ways(tmp_path, fake_hashes, allow_download):
    with pytest.raises(DataError) as error:
        image_data.fashion_mnist_arrays(tmp_path / "absent", tmp_path / "dl", allow_download, opener=FakeServer(unreachable=True))
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message and "fashion-mnist.s3" in message


def test_split_carves_validation_from_train_and_never_touches_test():
    full = {"train_x": np.arange(100)[:, None], "train_y": np.arange(100), "test_x": np.arange(1000, 1050)[:, None],
            "test_y": np.arange(1000, 1050)}
    parts = split_subsets(full, train_size=30, validation_size=20, test_size=10, seed=0)
    assert len(parts["train_y"]) == 30 and len(parts["validation_y"]) == 20 and len(parts["test_y"]) == 10
    assert not set(parts["train_y"]) & set(parts["validation_y"])
    assert set(parts["test_y"]) <= set(range(1000, 1050))  # test comes from the test split only
    assert set(parts["validation_y"]) | set(parts["train_y"]) <= set(range(100))
    fraction = split_subsets(full, train_size=None, validation_size=0.1, test_size=None, seed=0)
    assert len(fraction["validation_y"]) == 10 and len(fraction["train_y"]) == 90 and len(fraction["test_y"]) == 50
    with pytest.raises(DataError, match="train_size"):
        split_subsets(full, train_size=90, validation_size=20, test_size=None, seed=0)


def test_resizing_is_bilinear_on_pixel_centres():
    """Upsampling a 2x2 image with columns 0 and 255 to 4x4: pixel centres map to source coordinates
    (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped), so a row reads 0, 0.25, 0.75, 1 (align_corners=False;
    align_corners=True would give 0, 1/3, 2/3, 1)."""
    image = np.array([[[[0, 255], [0, 255]]]], dtype=np.uint8)
    resized = image_data.to_model_input(image, 4)
    assert resized.shape == (1, 1, 4, 4)
    for row in resized[0, 0]:
        assert row.tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0], abs=1e-6)
