"""Tiny local stand-ins for every online source of the paper profile, in the sources' own formats.

The paper profile downloads CIFAR-10, Hymenoptera, torchvision ImageNet weights, GPT-2, the regard classifier,
WikiText-103 and the official SCAN files. Here each is replaced by a tiny file in the same format, delivered through
the mechanism the real loading code already has, so that code runs unchanged and only the bytes differ:

The three downloaded files are served by an HTTP server on 127.0.0.1 (:func:`serve_folder`):

- SCAN: the official files (``IN: ... OUT: ...``, from the grammar, in a shuffled order) at the URL that
  ``scan.data.official_base_url`` names: the real download-and-verify code fetches them.
- CIFAR-10: ``cifar-10-python.tar.gz`` in the official layout (pickled batches, ``batches.meta``), fetched by
  torchvision from ``images.data.cifar10_url``; its md5s are in ``images.data.fixture_checksums``.
- Hymenoptera: ``hymenoptera_data.zip`` of generated JPEGs in the tutorial's folder layout, fetched from
  ``images.data.hymenoptera_url``; its image counts are in the same checksum file.
- torchvision backbones: the real architectures' random weights saved under ``$TORCH_HOME/hub/checkpoints`` with
  the official file names: torch.hub loads a cached file instead of downloading it.
- GPT-2, the regard classifier (``sasha/regardv3``) and WikiText-103 (``Salesforce/wikitext``): a tiny GPT-2 with a
  byte-level BPE trained here, a tiny BERT classifier with the regard label names, and a short test parquet,
  written into a Hugging Face cache (``$HF_HOME/hub``) under the real repository ids; ``HF_HUB_OFFLINE=1``.

:func:`build_paper_fixtures` writes them and returns the environment variables and the params overlay that point
there.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import json
import pickle
import random
import sys
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIXTURE_COMMIT = "0" * 40  # the revision refs/main points at in the fixture Hugging Face cache
REGARD_LABELS = ("negative", "neutral", "other", "positive")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TORCHVISION_BACKBONES = ("alexnet", "resnet18", "vgg11_bn", "densenet121")


@dataclass(frozen=True)
class PaperFixtures:
    root: Path
    env: dict[str, str]  # environment of every stage process

    def params(self, base_url: str) -> dict:
        """The overlay (on the paper profile and the smoke overlay) pointing the downloads at ``base_url``, where
        this folder is served (:func:`serve_folder`)."""
        base_url = base_url.rstrip("/")
        return {
            "scan": {"data": {"official_base_url": f"{base_url}/scan"}},
            "images": {"data": {"cifar10_url": f"{base_url}/images/cifar-10-python.tar.gz",
                                "hymenoptera_url": f"{base_url}/images/hymenoptera_data.zip",
                                "fixture_checksums": str(self.root / "images" / "checksums.json")}},
        }


@contextlib.contextmanager
def serve_folder(folder: Path):
    """An HTTP server on 127.0.0.1 (a free port) serving ``folder`` from a thread; yields its base URL.
    (torchvision's downloader needs HTTP: it reads the response's length, which file:// responses lack.)"""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # torchvision's redirect check opens the URL and closes it unread: the client hangs up mid-file.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's signature)
        pass


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ SCAN
def write_scan_official(folder: Path, seed: int = 0) -> Path:
    """The official SCAN files of both splits (same pairs as the grammar's, another line order)."""
    from equitune.scan.data import OFFICIAL_FILES, format_lines, generate_split

    for split, paths in OFFICIAL_FILES.items():
        generated = generate_split(split)
        for path, pairs in zip(paths, (generated.train, generated.test), strict=True):
            lines = list(pairs)
            random.Random(seed).shuffle(lines)
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(format_lines(lines))
    return folder


# ------------------------------------------------------------------------------------------------ CIFAR-10
def write_cifar10_archive(folder: Path, per_batch: int = 4, test_images: int = 8, seed: int = 0) -> dict:
    """``cifar-10-python.tar.gz`` in the official layout; returns its checksums (torchvision's keys)."""
    rng = np.random.default_rng(seed)
    staging = folder / "cifar-staging" / "cifar-10-batches-py"
    staging.mkdir(parents=True, exist_ok=True)

    def batch(name: str, count: int) -> None:
        data = rng.integers(0, 256, size=(count, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=count)]
        entry = {"batch_label": name, "labels": labels, "data": data,
                 "filenames": [f"{name}_{i}.png" for i in range(count)]}
        (staging / name).write_bytes(pickle.dumps(entry, protocol=2))

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_batch)
    batch("test_batch", test_images)
    meta = {"num_cases_per_batch": per_batch, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    (staging / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging, arcname="cifar-10-batches-py")
    return {"archive_md5": _md5(archive), "files": {p.name: _md5(p) for p in sorted(staging.iterdir())}}


# ------------------------------------------------------------------------------------------------ Hymenoptera
def write_hymenoptera_zip(folder: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> dict:
    """``hymenoptera_data.zip`` of generated JPEGs (photos of varied, non-square sizes, as in the tutorial set);
    returns its image counts per split and class."""
    from PIL import Image

    per_class = per_class or {"train": 6, "val": 3}
    rng = np.random.default_rng(seed)
    counts: dict = {}
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "hymenoptera_data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split, count in per_class.items():
            for cls in ("ants", "bees"):
                counts.setdefault(split, {})[cls] = count
                for i in range(count):
                    height, width = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                    buffer = io.BytesIO()
                    Image.fromarray(pixels).save(buffer, format="JPEG")
                    zf.writestr(f"hymenoptera_data/{split}/{cls}/{cls}_{i}.jpg", buffer.getvalue())
    return {"counts": counts}


# ------------------------------------------------------------------------------------------------ torchvision
def write_torchvision_weights(torch_home: Path, names=TORCHVISION_BACKBONES, seed: int = 0) -> None:
    """Random weights of the real architectures under torch.hub's cache, named as the official files."""
    import torch
    import torchvision

    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for name in names:
        url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
        target = checkpoints / url.rsplit("/", 1)[-1]
        if target.exists():
            continue
        torch.manual_seed(seed)
        torch.save(getattr(torchvision.models, name)(weights=None).state_dict(), target)


# ------------------------------------------------------------------------------------------------ Hugging Face
def _hub_snapshot(hf_home: Path, repo_type: str, repo_id: str) -> Path:
    repo = hf_home / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(FIXTURE_COMMIT)
    snapshot = repo / "snapshots" / FIXTURE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def _words_corpus() -> list[str]:
    """Every word of the shipped word lists and of the planted-bias control, and every demographic/template of the
    paper profile, repeated so that a small BPE learns each listed word as one token (the word-list rule of
    equitune.nlg.words)."""
    import yaml

    from equitune.nlg.config import NEGATIVE_WORDS
    from equitune.nlg.words import load_word_lists, word_forms

    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())["nlg"]
    words = [w for axis in load_word_lists().values() for key in ("equality", "general", "neutral")
             for entry in axis.get(key) or [] for w in (entry if isinstance(entry, list) else [entry])]
    forms = [f for w in words + list(NEGATIVE_WORDS) for f in word_forms(w)]  # + the planted-bias control's words
    contexts = [d for axis in params["axes"].values() for d in axis["demographics"]]
    templates = [t for family in params["templates"].values() for t in family]
    return forms * 40 + [f"{c} {t}" for c in contexts for t in templates] * 20


def wikitext_lines(count: int = 40) -> list[str]:
    """Lines in WikiText-103 raw's format: headings ``" = Title = \\n"``, blank lines, paragraphs."""
    rng = random.Random(0)
    # Every axis's equality words occur, as they do in WikiText-103's test split (the perplexity stage scores the
    # equality-word tokens of each axis and refuses a text without them).
    vocabulary = ("the man woman doctor nurse was known for his her work in city and river of a king queen "
                  "history album song game season team black white gay straight".split())
    lines = []
    for i in range(count):
        lines += [f" = Article {i} = \n", "",
                  " " + " ".join(rng.choice(vocabulary) for _ in range(40)) + " . \n", ""]
    return lines


def write_gpt2(hf_home: Path, corpus: list[str]) -> None:
    """A tiny GPT-2 (random weights) and a byte-level BPE, saved as the hub repository ``gpt2``."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    snapshot = _hub_snapshot(hf_home, "model", "gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=1200, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    raw = hf_home / "gpt2-bpe"
    raw.mkdir(exist_ok=True)
    bpe.save_model(str(raw))
    tokenizer = GPT2Tokenizer.from_pretrained(str(raw))  # GPT-2's: <|endoftext|> is bos, eos and unk; no pad
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=end, eos_token_id=end)
    GPT2LMHeadModel(config).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)


def write_regard_classifier(hf_home: Path, corpus: list[str]) -> None:
    """A tiny BERT sequence classifier with the regard label names, saved as the hub repository sasha/regardv3."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    snapshot = _hub_snapshot(hf_home, "model", "sasha/regardv3")
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(corpus, vocab_size=600, show_progress=False)
    raw = hf_home / "regard-wordpiece"
    raw.mkdir(exist_ok=True)
    wordpiece.save_model(str(raw))
    tokenizer = BertTokenizer.from_pretrained(str(raw))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=len(REGARD_LABELS),
                        id2label=dict(enumerate(REGARD_LABELS)), label2id={k: i for i, k in enumerate(REGARD_LABELS)})
    BertForSequenceClassification(config).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)


def write_wikitext(hf_home: Path, lines: list[str]) -> None:
    """The WikiText-103 raw test split as the hub dataset Salesforce/wikitext's parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from equitune.nlg.perplexity import WIKITEXT_REPO, WIKITEXT_TEST_FILE

    target = _hub_snapshot(hf_home, "dataset", WIKITEXT_REPO) / WIKITEXT_TEST_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": lines}), target)


def build_hub_fixtures(hf_home: Path) -> None:
    """GPT-2, the regard classifier and WikiText-103's test split in a Hugging Face cache at ``hf_home``."""
    lines = wikitext_lines()
    corpus = _words_corpus() + [line for line in lines if line]
    write_gpt2(hf_home, corpus)
    write_regard_classifier(hf_home, corpus)
    write_wikitext(hf_home, lines)


# ------------------------------------------------------------------------------------------------ all of it
def build_paper_fixtures(root: Path, backbones=TORCHVISION_BACKBONES) -> PaperFixtures:
    """Every source of the paper profile under ``root``; the environment and params that point at them."""
    root.mkdir(parents=True, exist_ok=True)
    write_scan_official(root / "scan")
    images = root / "images"
    images.mkdir(exist_ok=True)
    checksums = {"cifar10": write_cifar10_archive(images), "hymenoptera": write_hymenoptera_zip(images)}
    checksum_file = images / "checksums.json"
    checksum_file.write_text(json.dumps(checksums, indent=1))
    write_torchvision_weights(root / "torch", backbones)
    build_hub_fixtures(root / "hf")
    env = {"TORCH_HOME": str(root / "torch"), "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1"}
    return PaperFixtures(root, env)
