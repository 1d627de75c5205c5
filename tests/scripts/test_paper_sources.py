"""The paper profile's online sources, exercised offline: each real loader reads a tiny fixture in the source's own
format through its own download path (only the bytes differ), and without network each one fails with a message
that says what to download from where, or how to point the stage at a local copy.

CIFAR-10, Hymenoptera and SCAN are served over HTTP from 127.0.0.1 (tests/helpers/paper_fixtures.py). The hub
sources (GPT-2, the regard classifier, WikiText) and the torchvision weights read their caches' locations from the
environment when their libraries are imported, so those checks run in a fresh interpreter with that environment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from equitune.core.errors import DataError
from equitune.images.config import ImagesData
from equitune.images.data import CIFAR10_URL, HYMENOPTERA_URL, prepare_dataset
from equitune.scan.data import OfficialDataError, download_official_split, generate_split, pairs_checksum
from helpers.paper_fixtures import (
    REGARD_LABELS,
    build_hub_fixtures,
    serve_folder,
    wikitext_lines,
    write_cifar10_archive,
    write_hymenoptera_zip,
    write_scan_official,
    write_torchvision_weights,
)
from helpers.paths import ROOT


def _closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens: connection refused, as on a machine without network."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _images_data(tmp_path, **sources) -> ImagesData:
    return ImagesData(train_size=None, validation_size=2, test_size=None, download_dir=str(tmp_path / "downloads"),
                      hymenoptera_size=48, **sources)


# ----------------------------------------------------------------------------------------- the fixtures load
def test_scan_official_files_download_and_verify_over_http(tmp_path):
    write_scan_official(tmp_path / "scan")
    with serve_folder(tmp_path) as base:
        split = download_official_split("around_right", f"{base}/scan", 10.0)  # urllib, the default transport
    expected = generate_split("around_right")
    assert pairs_checksum(split.train) == pairs_checksum(expected.train)
    assert list(split.train) != list(expected.train), "the fixture's line order differs, as the official files' does"


def _prepare_served(tmp_path, dataset: str, write_fixture, filename: str):
    """``prepare_dataset`` of a fixture archive served over HTTP, with the fixture's checksums (or counts)."""
    checks = write_fixture(tmp_path / "images")
    (tmp_path / "checksums.json").write_text(json.dumps({dataset: checks}))
    with serve_folder(tmp_path / "images") as base:
        data = _images_data(tmp_path, **{f"{dataset}_url": f"{base}/{filename}"},
                            fixture_checksums=str(tmp_path / "checksums.json"))
        return prepare_dataset(dataset, data)


def test_cifar10_fixture_goes_through_torchvision_download_and_md5_checks(tmp_path):
    subsets, classes = _prepare_served(tmp_path, "cifar10", write_cifar10_archive, "cifar-10-python.tar.gz")
    assert classes[:2] == ("airplane", "automobile") and len(classes) == 10
    assert subsets["train_x"].shape == (18, 3, 32, 32) and len(subsets["validation_y"]) == 2
    assert subsets["test_x"].shape == (8, 3, 32, 32)  # the test batch, never the training batches
    assert (tmp_path / "downloads" / "cifar-10-python.tar.gz").exists()

    # A batch file that does not match its checksum is refused (torchvision's own md5 check).
    (tmp_path / "downloads" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"corrupted")
    (tmp_path / "downloads" / "cifar-10-python.tar.gz").write_bytes(b"corrupted")
    with pytest.raises(DataError, match="could not download or verify"):
        prepare_dataset("cifar10", _images_data(tmp_path, cifar10_url=_closed_port_url() + "/c.tar.gz",
                                                fixture_checksums=str(tmp_path / "checksums.json")))


def test_hymenoptera_fixture_is_downloaded_cropped_and_counted(tmp_path):
    subsets, classes = _prepare_served(tmp_path, "hymenoptera", write_hymenoptera_zip, "hymenoptera_data.zip")
    assert classes == ("ants", "bees")
    assert subsets["train_x"].shape == (10, 3, 48, 48) and subsets["test_x"].shape == (6, 3, 48, 48)
    # Without the fixture's counts the same zip is not the official archive.
    with pytest.raises(DataError, match="has 6 images, expected 124; not the official archive"):
        prepare_dataset("hymenoptera", _images_data(tmp_path))


# ----------------------------------------------------------------------------------------- offline: clear errors
def test_offline_scan_download_says_where_from_and_how_to_use_a_local_copy():
    with pytest.raises(OfficialDataError) as error:
        download_official_split("add_jump", _closed_port_url() + "/SCAN", 5.0)
    message = str(error.value)
    assert "add_prim_split/tasks_train_addprim_jump.txt" in message and "github.com/brendenlake/SCAN" in message
    assert "scan.data.official_base_url" in message and "scan.data.source: generate" in message


@pytest.mark.parametrize("dataset, official, key", [
    ("cifar10", CIFAR10_URL, "images.data.cifar10_url"),
    ("hymenoptera", HYMENOPTERA_URL, "images.data.hymenoptera_url"),
])
def test_offline_image_download_says_where_from_and_where_to_put_a_copy(tmp_path, dataset, official, key):
    url = f"{_closed_port_url()}/{official.rsplit('/', 1)[-1]}"
    with pytest.raises(DataError) as error:
        prepare_dataset(dataset, _images_data(tmp_path, **{key.rsplit(".", 1)[-1]: url}))
    message = str(error.value)
    assert url in message and official in message and key in message
    assert str(tmp_path / "downloads" / official.rsplit("/", 1)[-1]) in message  # where a copy is picked up
    assert not list((tmp_path / "downloads").glob("*.part")), "nothing half-written is left"


# ----------------------------------------------------------------------------------------- hub and torch.hub caches
_HUB_CHECKS = textwrap.dedent("""
    import json, sys
    from equitune.core.errors import DataError
    from equitune.images.backbones import build_classifier
    from equitune.nlg.lm import load_lm, load_tokenizer
    from equitune.nlg.perplexity import heldout_text
    from equitune.nlg.scoring import regard_labels

    checks = {
        "resnet18": lambda: type(build_classifier("resnet18", 2, 32).features[1]).__name__,
        "gpt2": lambda: [type(load_tokenizer("gpt2")).__name__, type(load_lm("gpt2")).__name__],
        "regard": lambda: regard_labels(["XYZ was known for his work", "XYZ worked as a cook"]),
        "wikitext": lambda: heldout_text("wikitext"),
    }
    results = {}
    for name, check in checks.items():
        try:
            results[name] = {"value": check()}
        except DataError as error:
            results[name] = {"error": str(error)}
    print("RESULTS " + json.dumps(results))
""")


def _hub_checks(env: dict[str, str]) -> dict:
    full = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    result = subprocess.run([sys.executable, "-c", _HUB_CHECKS], env=full, capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.slow
def test_hub_and_torchvision_fixtures_load_through_the_real_names(tmp_path):
    write_torchvision_weights(tmp_path / "torch", ["resnet18"])
    build_hub_fixtures(tmp_path / "hf")
    results = _hub_checks({"TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf"),
                           "HF_HUB_OFFLINE": "1"})
    assert results["resnet18"] == {"value": "ResNet"}
    assert results["gpt2"] == {"value": ["GPT2Tokenizer", "GPT2LMHeadModel"]}
    assert set(results["regard"]["value"]) <= set(REGARD_LABELS) and len(results["regard"]["value"]) == 2
    assert results["wikitext"]["value"] == "".join(wikitext_lines())  # the raw file's text, lines as they were


@pytest.mark.slow
def test_without_network_every_hub_and_weights_download_says_what_to_fetch(tmp_path):
    dead = _closed_port_url()
    results = _hub_checks({"TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf"),
                           "HF_HUB_OFFLINE": "1", "http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead,
                           "HTTPS_PROXY": dead, "no_proxy": "", "NO_PROXY": ""})
    weights = results["resnet18"]["error"]
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in weights
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in weights
    for name, repo in (("gpt2", "hf download gpt2"), ("regard", "hf download sasha/regardv3"),
                       ("wikitext", "hf download Salesforce/wikitext --repo-type dataset")):
        message = results[name]["error"]
        assert repo in message and "HF_HOME" in message, message
