"""A pipeline folder saved by an earlier release (tests/fixtures/legacy_pipeline, see its README) still loads and gives
the seeded candidates it gave then, with every sampler setting."""

import json
from pathlib import Path

import pytest
import torch
from conftest import with_scheduler

from codefusion_hf import CodeFusionCommitScheduler, CodeFusionPipeline, CodeFusionScheduler

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "legacy_pipeline"
EXPECTED = json.loads((FIXTURE / "expected_outputs.json").read_text())


@pytest.fixture(scope="module")
def legacy_pipeline():
    pipe = CodeFusionPipeline.from_pretrained(FIXTURE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_legacy_config_reads_as_today():
    config = json.loads((FIXTURE / "model" / "config.json").read_text())
    assert config["self_condition_rounding"] == "decoder"
    assert type(CodeFusionPipeline.from_pretrained(FIXTURE).scheduler) is CodeFusionScheduler


@pytest.mark.parametrize("name", sorted(EXPECTED["calls"]))
def test_legacy_pipeline_reproduces_its_candidates(legacy_pipeline, name):
    expected = EXPECTED["calls"][name]
    kwargs = dict(expected["kwargs"])
    pipe = legacy_pipeline
    if kwargs.pop("commit_tokens", False):  # the committing sampler, then a pipeline argument, is a scheduler now
        pipe = with_scheduler(pipe, CodeFusionCommitScheduler)
    output = pipe(
        EXPECTED["prompts"],
        num_inference_steps=EXPECTED["num_inference_steps"],
        num_return_sequences=EXPECTED["num_return_sequences"],
        generator=torch.Generator().manual_seed(EXPECTED["seed"]),
        return_trajectory=[0, 9],
        **kwargs,
    )
    assert output.code == expected["code"]
    assert [entry["code"] for entry in output.trajectory] == expected["trajectory"]
    assert torch.allclose(torch.tensor(output.scores), torch.tensor(expected["scores"]), atol=1e-5)
