"""EquiLM generation under `torchrun --nproc_per_node=2` (gloo, CPU) against the same stage in one process.

The decoding jobs (one stream per sample and method) are split across the ranks in contiguous shares and gathered
on every rank in the original order; a sample's random numbers travel with its stream, so the samples file must be
byte-for-byte the one a single process writes. Only the decoder's own accounting differs: each rank prefills its
own distinct prompts, and rows shared by streams that land on different ranks are computed twice.
"""

from __future__ import annotations

import pytest
import yaml

from helpers.paths import ROOT
from helpers.torchrun import check_ran, read_json, run_script, world_sizes_logged
from helpers.toy_project import temp_files


@pytest.mark.longest(seconds=130)
@pytest.mark.slow  # three processes that load the 135M-parameter LM
def test_two_processes_write_the_same_samples_as_one(tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    nlg = data["nlg"]
    nlg["axes"] = {"gender": nlg["axes"]["gender"]}
    nlg["templates"] = {"respect": nlg["templates"]["respect"][:2], "occupation": nlg["templates"]["occupation"][:1]}
    nlg.update(seeds=[0, 1], max_new_tokens=5, batch_size=16)  # 12 samples per method and backbone
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    check_ran(run_script("nlg/prompts", ["--params", "params.yaml", "--out", "prompts.json"], tmp_path))
    for processes in (1, 2):
        check_ran(run_script("nlg/generate", ["--params", "params.yaml", "--prompts", "prompts.json", "--samples",
                                              f"p{processes}/samples.jsonl", "--metrics",
                                              f"p{processes}/generation.json"], tmp_path, processes))

    one, two = ((tmp_path / f"p{n}/samples.jsonl").read_bytes() for n in (1, 2))
    assert len(nlg["methods"]) == 4  # base, EquiLM, R-EquiLM, CanonLM
    assert one == two and len(one.splitlines()) == 96  # 2 backbones x 4 methods x 2 demographics x 6 draws
    metrics = [read_json(tmp_path / f"p{n}/generation.json") for n in (1, 2)]
    decoding = [m.pop("decoding") for m in metrics]
    assert metrics[0] == metrics[1]  # group-image fractions and lengths come from the (identical) samples
    for backbone in decoding[0]:
        for key in ("requested_row_steps", "requested_prefill_rows", "generated_tokens"):
            assert decoding[0][backbone][key] == decoding[1][backbone][key], (backbone, key)
    assert sorted(p.name for p in (tmp_path / "p2").iterdir()) == ["generation.json", "samples.jsonl"]
    assert world_sizes_logged(tmp_path / "mlflow.db", "equitune-nlg", ",".join(nlg["methods"])) == ["1", "2"]
    assert not temp_files(tmp_path)
