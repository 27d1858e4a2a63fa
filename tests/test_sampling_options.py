import dataclasses
import inspect

import pytest
import torch
from conftest import tiny_config

from codefusion_hf import CodeFusionCommitScheduler, CodeFusionPipeline, CodeFusionScheduler
from codefusion_hf.sampling_options_codefusion import DEFAULT_LENGTH_BEAM, DEFAULT_STRENGTH, SamplingOptions


def test_every_option_is_a_keyword_argument_of_the_call():
    """One object for the sampling options: its fields are the call's keyword arguments (commit_tokens picks the
    scheduler), with the call's defaults, so it can be handed through the CLI and evaluation to the call."""
    parameters = inspect.signature(CodeFusionPipeline.__call__).parameters
    call_kwargs = SamplingOptions().call_kwargs()
    assert set(call_kwargs) == {field.name for field in dataclasses.fields(SamplingOptions)} - {"commit_tokens"}
    for name, value in call_kwargs.items():
        assert parameters[name].default == value, name


def test_options_are_resolved_to_what_the_call_runs(code_tokenizer):
    plain = tiny_config(code_tokenizer)
    trimmed = tiny_config(code_tokenizer, predict_length=True, canvas_margin=2)
    rounded = tiny_config(code_tokenizer, self_condition=True, self_condition_rounding="decoder")
    ddim = CodeFusionScheduler()
    commit = CodeFusionCommitScheduler()
    resolved = SamplingOptions(num_return_sequences=5).resolved(config=plain, scheduler=ddim, refining=False)
    assert (resolved.rounding, resolved.code_length, resolved.length_beam) == ("none", "full", 1)
    assert resolved.strength is None and resolved.commit_tokens is False
    resolved = SamplingOptions(num_return_sequences=5).resolved(config=trimmed, scheduler=commit, refining=False)
    assert (resolved.code_length, resolved.length_beam, resolved.commit_tokens) == (
        "predicted",
        DEFAULT_LENGTH_BEAM,
        True,
    )
    resolved = SamplingOptions(num_return_sequences=2).resolved(config=trimmed, scheduler=ddim, refining=False)
    assert resolved.length_beam == 2  # at most one length per candidate
    resolved = SamplingOptions().resolved(config=trimmed, scheduler=ddim, refining=True)
    assert (resolved.code_length, resolved.strength) == ("full", DEFAULT_STRENGTH)  # given code keeps its length
    assert SamplingOptions().resolved(config=rounded, scheduler=ddim, refining=False).rounding == "decoder"
    custom = SamplingOptions(timesteps=[900, 400, 10]).resolved(config=plain, scheduler=ddim, refining=False)
    assert custom.num_inference_steps == 3
    with pytest.raises(ValueError, match="length_beam=2 spreads the candidates"):
        SamplingOptions(num_return_sequences=2, length_beam=2).resolved(config=plain, scheduler=ddim, refining=False)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"num_inference_steps": 0}, "num_inference_steps must be an integer from 1 to"),
        ({"num_return_sequences": True}, "num_return_sequences must be a positive integer"),
        ({"rounding": "round"}, "rounding must be None"),
        ({"eta": float("nan")}, "eta must be a finite number"),
        ({"guidance_scale": 0.5}, "guidance_scale must be a finite number >= 1"),
        ({"settled_margin": 2}, "CodeFusionScheduler commits nothing"),
        ({"ranking": "bleu"}, "ranking must be one of"),
        ({"condition_enhanced_timestep": 1200}, "condition_enhanced_timestep must be None"),
        ({"code_length": "predicted"}, "needs a model with a length head"),
        ({"num_return_sequences": 2, "length_beam": 3}, "length_beam must be None or an integer from 1 to 2"),
        ({"num_return_sequences": 2, "draft_candidates": 3}, "draft_candidates must be an integer from 0 to"),
    ],
)
def test_options_are_checked_against_the_model_and_scheduler(code_tokenizer, options, match):
    with pytest.raises(ValueError, match=match):
        SamplingOptions(**options).check(config=tiny_config(code_tokenizer), scheduler=CodeFusionScheduler())


def test_eta_is_refused_by_a_committing_scheduler(code_tokenizer):
    with pytest.raises(ValueError, match="CodeFusionCommitScheduler draws fresh noise"):
        SamplingOptions(eta=1.0).check(config=tiny_config(code_tokenizer), scheduler=CodeFusionCommitScheduler())


def test_commit_tokens_samples_with_the_committing_scheduler_and_leaves_the_pipeline_alone(tiny_pipeline):
    committing = SamplingOptions(commit_tokens=True).prepare_pipeline(tiny_pipeline)
    assert isinstance(committing.scheduler, CodeFusionCommitScheduler)
    assert isinstance(tiny_pipeline.scheduler, CodeFusionScheduler) and committing.model is tiny_pipeline.model
    assert torch.equal(committing.scheduler.alphas_cumprod, tiny_pipeline.scheduler.alphas_cumprod)  # same schedule
    assert SamplingOptions().prepare_pipeline(tiny_pipeline) is tiny_pipeline
    assert SamplingOptions(commit_tokens=True).prepare_pipeline(committing) is committing


def test_the_call_reports_the_options_it_ran_and_takes_them_back(tiny_pipeline):
    """`output.settings` holds the resolved options; handing them to another call reproduces it."""
    options = SamplingOptions(num_inference_steps=3, num_return_sequences=2, ranking="length_normalized")
    first = tiny_pipeline("list all files", generator=torch.Generator().manual_seed(0), **options.call_kwargs())
    assert first.settings == options.resolved(
        config=tiny_pipeline.model.config, scheduler=tiny_pipeline.scheduler, refining=False
    )
    again = tiny_pipeline("list all files", generator=torch.Generator().manual_seed(0), **first.settings.call_kwargs())
    assert again.code == first.code and again.scores == first.scores
