import copy
import math

import pytest
import torch
from conftest import PAIRS, make_code_tokenizer, make_pipeline, overfit, seeded, tiny_config, with_scheduler

from codefusion_hf import (
    CodeFusionCommitScheduler,
    CodeFusionModel,
    CodeFusionPipeline,
    CodeFusionScheduler,
    canvas_planning_codefusion,
    pipeline_codefusion,
)
from codefusion_hf.canvas_planning_codefusion import canvas_groups
from codefusion_hf.sampling_options_codefusion import DEFAULT_LENGTH_BEAM

SCHEDULERS = [CodeFusionScheduler, CodeFusionCommitScheduler]


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_overfit_model_regenerates_its_training_pairs(overfit_pipeline, scheduler_class):
    """Model, scheduler and pipeline agree: a memorised pair comes back exactly, from any starting noise, with the
    paper's sampler and with the committing one."""
    prompts = [prompt for prompt, _ in PAIRS]
    output = with_scheduler(overfit_pipeline, scheduler_class)(
        prompts,
        num_inference_steps=20,
        num_return_sequences=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert output.code == [[code] * 3 for _, code in PAIRS]
    assert all(-1.0 < score <= 0 for scores in output.scores for score in scores)


def test_seeded_generation_is_reproducible(tiny_pipeline):
    first = seeded(tiny_pipeline, ["list all files", "show disk usage"], num_return_sequences=2)
    again = seeded(tiny_pipeline, ["list all files", "show disk usage"], num_return_sequences=2)
    assert first.code == again.code and first.scores == again.scores
    # Positional arguments in the documented order: prompt, num_inference_steps, num_return_sequences, generator.
    positional = tiny_pipeline(["list all files", "show disk usage"], 5, 2, torch.Generator().manual_seed(0))
    assert positional.code == first.code
    latents = seeded(tiny_pipeline, "list all files", output_type="latent").code
    other = seeded(tiny_pipeline, "list all files", seed=1, output_type="latent").code
    assert not torch.allclose(latents, other)


def test_candidates_are_ranked_by_score(tiny_pipeline):
    output = seeded(tiny_pipeline, ["list all files", "show disk usage"], num_return_sequences=4)
    assert [len(c) for c in output.code] == [4, 4]
    for scores in output.scores:
        assert scores == sorted(scores, reverse=True)
    ids = seeded(tiny_pipeline, ["list all files", "show disk usage"], num_return_sequences=4, output_type="pt").code
    assert ids.shape == (2, 4, tiny_pipeline.model.config.max_code_length)
    # The text is the ids cut at the first pad/eos, in the same ranked order.
    config = tiny_pipeline.model.config
    for prompt_ids, texts in zip(ids, output.code):
        for row, text in zip(prompt_ids.tolist(), texts):
            stops = [i for i, t in enumerate(row) if t in (config.pad_token_id, config.eos_token_id)]
            kept = row[: stops[0]] if stops else row
            assert text == tiny_pipeline.tokenizer.decode(
                kept, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )


def test_prompt_is_encoded_once_and_candidates_batched(tiny_pipeline, monkeypatch):
    model = tiny_pipeline.model
    encode_calls, denoise_batches = [], []
    encode, denoise = model.encode, model.denoise
    monkeypatch.setattr(model, "encode", lambda *a, **k: encode_calls.append(1) or encode(*a, **k))
    monkeypatch.setattr(
        model, "denoise", lambda latents, *a, **k: denoise_batches.append(len(latents)) or denoise(latents, *a, **k)
    )
    seeded(tiny_pipeline, ["a", "b", "c"], num_return_sequences=2)
    assert encode_calls == [1]
    assert denoise_batches == [6] * 5


def test_max_length_trims_output(tiny_pipeline):
    ids = seeded(tiny_pipeline, "list all files", output_type="pt", max_length=3).code
    assert ids.shape[-1] == 3
    full = seeded(tiny_pipeline, "list all files", output_type="pt").code[0, 0].tolist()
    config = tiny_pipeline.model.config
    stop = next((i for i, t in enumerate(full) if t in (config.pad_token_id, config.eos_token_id)), len(full))
    text = seeded(tiny_pipeline, "list all files", max_length=3).code[0][0]
    assert text == tiny_pipeline.tokenizer.decode(full[: min(stop, 3)], skip_special_tokens=True)


def test_trajectory_records_requested_steps(tiny_pipeline):
    output = tiny_pipeline(
        "list all files", num_inference_steps=10, num_return_sequences=2, return_trajectory=[0, 4, 9]
    )
    assert [entry["step"] for entry in output.trajectory] == [0, 4, 9]
    timesteps = tiny_pipeline.scheduler.timesteps.tolist()
    assert [entry["timestep"] for entry in output.trajectory] == [timesteps[0], timesteps[4], timesteps[9]]
    assert all(len(entry["code"]) == 1 and len(entry["code"][0]) == 2 for entry in output.trajectory)
    assert len(tiny_pipeline("x", num_inference_steps=4, return_trajectory=True).trajectory) == 4
    assert tiny_pipeline("x", num_inference_steps=4).trajectory is None
    numpy_steps = tiny_pipeline("x", num_inference_steps=4, return_trajectory=torch.tensor([1, 3]).numpy())
    assert [entry["step"] for entry in numpy_steps.trajectory] == [1, 3]


def test_overfit_trajectory_ends_at_the_answer(overfit_pipeline):
    output = overfit_pipeline("list all files", num_inference_steps=10, return_trajectory=True)
    assert output.trajectory[-1]["code"] == output.code == [["ls -la"]]


def test_callback_on_step_end(tiny_pipeline):
    seen = []

    def callback(pipe, step_index, timestep, callback_kwargs):
        seen.append(step_index)
        return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    zeroed = tiny_pipeline("x", num_inference_steps=3, callback_on_step_end=callback, output_type="latent")
    assert seen == [0, 1, 2]
    plain = tiny_pipeline("x", num_inference_steps=3, output_type="latent")
    assert not torch.allclose(zeroed.code, plain.code)


def test_code_to_ids_fills_the_canvas(tiny_pipeline, code_tokenizer):
    canvas = tiny_pipeline.model.config.max_code_length
    ids = tiny_pipeline.code_to_ids(["ls -la", "df -h " * 40])
    expected = code_tokenizer("ls -la", add_special_tokens=False)["input_ids"]
    assert ids.shape == (2, canvas)
    assert ids[0, : len(expected)].tolist() == expected
    assert (ids[0, len(expected) :] == tiny_pipeline.model.config.pad_token_id).all()
    assert (ids[1] != tiny_pipeline.model.config.pad_token_id).all()  # truncated to the canvas


def test_model_mode_is_restored(tiny_pipeline):
    tiny_pipeline.model.train()
    tiny_pipeline("x", num_inference_steps=2)
    assert tiny_pipeline.model.training


def test_model_mode_is_restored_after_an_error_while_sampling(tiny_pipeline):
    def interrupt(pipe, step_index, timestep, callback_kwargs):
        raise KeyboardInterrupt

    tiny_pipeline.model.train()
    with pytest.raises(KeyboardInterrupt):
        tiny_pipeline("x", num_inference_steps=2, callback_on_step_end=interrupt)
    assert tiny_pipeline.model.training


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["ok", "   "]}, r"prompt\[1\]"),
        ({"prompt": ["ok", 3]}, r"prompt\[1\]"),
        ({"prompt": None}, "prompt"),
        ({"prompt": {"list files", "show disk usage"}}, "got a set: its order is not the order of the outputs"),
        ({"prompt": {"list files": 1}}, "got a dict"),
        ({"prompt": ["ok", "ls \udcff"]}, r"prompt\[1\] 'ls \\udcff' holds '\\udcff' at position 3"),
        ({"generator": 0}, "generator must be a torch.Generator, a list of them or None, got int"),
        ({"generator": [torch.Generator()] * 2}, "a list of 2 generators, but the call draws 1 candidates"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 101}, "num_inference_steps"),
        ({"num_inference_steps": True}, "num_inference_steps"),
        ({"num_return_sequences": 0}, "num_return_sequences"),
        ({"num_return_sequences": 2.0}, "num_return_sequences"),
        ({"max_length": 17}, "max_length"),
        ({"max_length": 2.5}, "max_length"),
        ({"output_type": "np"}, "output_type"),
        ({"rounding": "argmax"}, "rounding"),
        ({"eta": -0.5}, "eta"),
        ({"eta": float("nan")}, "eta"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"guidance_scale": float("inf")}, "guidance_scale"),
        ({"guidance_scale": "2"}, "guidance_scale"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_call_arguments(tiny_pipeline, kwargs, name):
    kwargs = {"prompt": "list all files", **kwargs}
    with pytest.raises(ValueError, match=name):
        tiny_pipeline(**kwargs)


def test_eta_needs_a_scheduler_with_stochastic_steps(tiny_pipeline):
    """The committing scheduler draws fresh noise at every step: an eta for it is a mistake, not ignored."""
    pipe = with_scheduler(tiny_pipeline, CodeFusionCommitScheduler)
    with pytest.raises(ValueError, match="eta=1.0 .*CodeFusionCommitScheduler"):
        seeded(pipe, "list all files", eta=1.0)
    assert seeded(pipe, "list all files", eta=0).code == seeded(pipe, "list all files").code


def test_long_prompt_is_truncated_with_a_warning(tiny_pipeline, monkeypatch):
    messages = []
    monkeypatch.setattr(pipeline_codefusion.logger, "warning", messages.append)
    long_prompt = " ".join(["list all files"] * 20)
    output = seeded(tiny_pipeline, [long_prompt, "df"])
    assert len(output.code) == 2
    assert len(messages) == 1 and "max_prompt_length=16" in messages[0] and "[0]" in messages[0]


def test_tokenizer_must_match_vocab(tiny_model):
    other = make_code_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="vocab_size"):
        make_pipeline(tiny_model, other)


def test_scheduler_must_match_training_schedule(tiny_model, code_tokenizer):
    with pytest.raises(ValueError, match="num_train_timesteps"):
        CodeFusionPipeline(
            model=tiny_model, scheduler=CodeFusionScheduler(num_train_timesteps=1200), tokenizer=code_tokenizer
        )
    with pytest.raises(ValueError, match="noise_schedule"):
        CodeFusionPipeline(
            model=tiny_model,
            scheduler=CodeFusionScheduler(num_train_timesteps=100, noise_schedule="cosine"),
            tokenizer=code_tokenizer,
        )


def test_prompts_from_a_dataset_column(tiny_pipeline):
    from datasets import Dataset

    column = Dataset.from_dict({"prompt": ["list all files", "show disk usage"]})["prompt"]
    assert seeded(tiny_pipeline, column).code == seeded(tiny_pipeline, ["list all files", "show disk usage"]).code


def test_self_conditioned_sampling_passes_the_previous_estimate(code_tokenizer, monkeypatch):
    torch.manual_seed(0)
    pipe = make_pipeline(CodeFusionModel(tiny_config(code_tokenizer, self_condition=True)), code_tokenizer)
    received, estimates = [], []
    denoise, step = pipe.model.denoise, pipe.scheduler.step
    monkeypatch.setattr(pipe.model, "denoise", lambda *a: received.append(a[4]) or denoise(*a))
    monkeypatch.setattr(pipe.scheduler, "step", lambda *a, **k: estimates.append(step(*a, **k)) or estimates[-1])
    pipe("list all files", num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert received[0] is None and len(received) == 4
    for given, previous in zip(received[1:], estimates[:-1]):
        assert given is previous.pred_original_sample


@pytest.mark.parametrize("rounding", ["nearest", "decoder", "decoder_mean"])
def test_rounding_replaces_each_estimate(tiny_pipeline, monkeypatch, rounding):
    """Every step hands the scheduler exactly what `round_estimate` (tested in test_modeling) returns for the clipped
    estimate; "nearest" makes every position one token's embedding, and the last step lands on the estimate."""
    estimates, rounded = [], []
    step, round_estimate = tiny_pipeline.scheduler.step, tiny_pipeline.model.round_estimate
    monkeypatch.setattr(
        tiny_pipeline.scheduler, "step", lambda *a, **k: estimates.append(step(*a, **k)) or estimates[-1]
    )
    monkeypatch.setattr(
        tiny_pipeline.model,
        "round_estimate",
        lambda *a, **k: rounded.append((a[1], round_estimate(*a, **k))) or rounded[-1][1],
    )
    latents = seeded(tiny_pipeline, "list all files", rounding=rounding, output_type="latent").code[0, 0]
    assert len(estimates) == 5 and len(rounded) == 5 and all(name == rounding for name, _ in rounded)
    assert all(output.pred_original_sample is value for output, (_, value) in zip(estimates, rounded))
    if rounding == "nearest":
        embeddings = tiny_pipeline.model.code_embedding_matrix()
        for output in estimates:  # every position is exactly one token's embedding
            assert (output.pred_original_sample[0][:, None, :] == embeddings[None]).all(dim=-1).any(dim=-1).all()
    torch.testing.assert_close(latents, estimates[-1].pred_original_sample[0])  # the last step lands on it


def test_commit_scheduler_commits_a_growing_share_of_positions(tiny_pipeline, monkeypatch):
    """CodeFusionCommitScheduler: at step n of N the denoiser reads ceil(canvas * n / N) committed positions at t = 0
    and the others at the step's timestep; every position is committed after the last step, and the output is those
    tokens, ranked by their mean log-probability (which the last trajectory entry shows as well)."""
    pipe = with_scheduler(tiny_pipeline, CodeFusionCommitScheduler)
    canvas_length = pipe.model.config.max_code_length
    seen = []
    denoise = pipe.model.denoise
    monkeypatch.setattr(pipe.model, "denoise", lambda *a: seen.append(a[1]) or denoise(*a))
    output = seeded(pipe, ["list all files", "count lines"], num_return_sequences=3, return_trajectory=True)
    timesteps = pipe.scheduler.timesteps
    assert len(seen) == 5
    for step_index, position_timesteps in enumerate(seen):
        assert position_timesteps.shape == (6, canvas_length)
        committed = position_timesteps == 0
        assert (committed.sum(dim=1) == math.ceil(canvas_length * step_index / 5)).all()
        assert (position_timesteps[~committed] == timesteps[step_index]).all()
    for scores in output.scores:
        assert scores == sorted(scores, reverse=True)
    assert output.trajectory[-1]["code"] == output.code
    latents = seeded(pipe, "list all files", output_type="latent").code[0, 0]
    token_ids = seeded(pipe, "list all files", output_type="pt").code[0, 0]
    # The final canvas is the committed tokens' embeddings at t = 0 (almost clean): nearest embedding is each token.
    embeddings = pipe.model.code_embedding_matrix()
    assert torch.equal(torch.cdist(latents, embeddings).argmin(dim=-1), token_ids)


def test_guided_denoise_is_the_guidance_formula(code_tokenizer):
    """One batch of conditional and unconditional rows gives what two separate denoiser calls give, combined as
    unconditional + scale * (conditional - unconditional); the unconditional rows see an unmasked prompt."""
    torch.manual_seed(0)
    pipe = make_pipeline(CodeFusionModel(tiny_config(code_tokenizer, self_condition=True)), code_tokenizer).to("cpu")
    states, mask = pipe.encode_prompt(["list all files", "count the lines of every file"], torch.device("cpu"))
    assert not mask.all()  # the shorter prompt is padded: the masks of the two halves differ
    canvas = (2, pipe.model.config.max_code_length, pipe.model.config.latent_dim)
    latents, self_condition, unconditional_states = torch.randn(canvas), torch.randn(canvas), torch.randn(states.shape)
    for timesteps in (torch.tensor(50), torch.randint(0, 100, canvas[:2])):
        conditional = pipe.model.denoise(latents, timesteps, states, mask, self_condition)
        unconditional = pipe.model.denoise(
            latents, timesteps, unconditional_states, torch.ones_like(mask), self_condition
        )
        guided = pipe.guided_denoise(latents, timesteps, states, mask, self_condition, 3.0, unconditional_states)
        torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional))
        assert torch.equal(pipe.guided_denoise(latents, timesteps, states, mask, self_condition), conditional)


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_guidance_scale_guides_every_step(tiny_pipeline, monkeypatch, scheduler_class):
    """With guidance_scale > 1 every step guides with the same unconditional states, drawn after the starting
    canvas (which stays as it was); guidance_scale=1 is the unguided call itself."""
    pipe = with_scheduler(tiny_pipeline, scheduler_class)
    calls = []
    guided_denoise = pipe.guided_denoise
    monkeypatch.setattr(pipe, "guided_denoise", lambda *a: calls.append(a) or guided_denoise(*a))
    prompts = ["list all files", "count lines"]
    unguided = seeded(pipe, prompts, num_return_sequences=2)
    assert len(calls) == 5 and all(call[5] == 1.0 and call[6] is None for call in calls)
    start = calls[0][0]
    calls.clear()
    guided = seeded(pipe, prompts, num_return_sequences=2, guidance_scale=4.0)
    assert len(calls) == 5 and all(call[5] == 4.0 for call in calls)
    assert torch.equal(calls[0][0], start)
    unconditional_states = calls[0][6]
    assert unconditional_states.shape == calls[0][2].shape and not torch.equal(unconditional_states, calls[0][2])
    assert all(call[6] is unconditional_states for call in calls)
    assert guided.code != unguided.code or guided.scores != unguided.scores
    same = seeded(pipe, prompts, num_return_sequences=2, guidance_scale=1)
    assert same.code == unguided.code and same.scores == unguided.scores


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_rounding_defaults_to_the_models_own(code_tokenizer, monkeypatch, scheduler_class):
    """rounding=None is the model's `self_condition_rounding`, "none" is no rounding: with either scheduler (the
    committing one reads the decoder's tokens whatever the rounding, which shapes the self-conditioning estimate)."""
    config = tiny_config(code_tokenizer, self_condition=True, self_condition_rounding="decoder")
    pipe = make_pipeline(CodeFusionModel(config), code_tokenizer, scheduler_class)
    calls = []
    round_estimate = pipe.model.round_estimate
    monkeypatch.setattr(pipe.model, "round_estimate", lambda *a, **k: calls.append(a[1]) or round_estimate(*a, **k))
    assert seeded(pipe, "list all files").settings.rounding == "decoder"
    assert seeded(pipe, "list all files", rounding="none").settings.rounding == "none"
    assert calls == ["decoder"] * 5 + ["none"] * 5


def test_given_latents_and_timesteps(tiny_pipeline, monkeypatch):
    """`latents` replaces the drawn starting canvas (the same canvas gives the same output) and `timesteps`
    replaces the evenly spaced ones: the denoiser sees exactly those steps, starting from exactly that canvas."""
    config = tiny_pipeline.model.config
    drawn = torch.randn(4, config.max_code_length, config.latent_dim, generator=torch.Generator().manual_seed(0))
    default = seeded(tiny_pipeline, ["list all files", "count lines"], num_return_sequences=2, output_type="pt")
    given = seeded(
        tiny_pipeline,
        ["list all files", "count lines"],
        seed=1,
        num_return_sequences=2,
        latents=drawn,
        output_type="pt",
    )
    torch.testing.assert_close(given.code, default.code)

    calls = []
    denoise = tiny_pipeline.model.denoise
    monkeypatch.setattr(
        tiny_pipeline.model,
        "denoise",
        lambda latents, t, *a: calls.append((latents, int(t))) or denoise(latents, t, *a),
    )
    start = drawn[:1] * 0.5
    tiny_pipeline("list all files", timesteps=[40, 20, 3], latents=start)
    assert [t for _, t in calls] == [40, 20, 3]
    torch.testing.assert_close(calls[0][0], start)


def test_a_clipped_model_is_sampled_where_it_was_trained(code_tokenizer, monkeypatch):
    """config.min_train_timestep (recorded by the trainer's clip) keeps the evenly placed steps at or above it;
    custom timesteps are used as given."""
    model = CodeFusionModel(tiny_config(code_tokenizer, num_train_timesteps=100, min_train_timestep=60))
    pipe = make_pipeline(model, code_tokenizer)
    seen, denoise = [], model.denoise
    monkeypatch.setattr(model, "denoise", lambda latents, t, *a: seen.append(int(t)) or denoise(latents, t, *a))
    pipe("list all files", num_inference_steps=4)
    assert seen == [99, 89, 79, 69]  # 60 + 40 * k // 4 - 1 for k = 4 .. 1
    seen.clear()
    pipe("list all files", timesteps=[50, 10])
    assert seen == [50, 10]
    with pytest.raises(ValueError, match="num_inference_steps must be an integer from 1 to 40, the timesteps"):
        pipe("list all files", num_inference_steps=41)


def test_timesteps_replace_num_inference_steps(code_tokenizer):
    """With `timesteps`, the default num_inference_steps (50) is not checked against a schedule shorter than it."""
    pipe = make_pipeline(CodeFusionModel(tiny_config(code_tokenizer, num_train_timesteps=20)), code_tokenizer)
    with pytest.raises(ValueError, match="num_inference_steps must be an integer from 1 to 20"):
        pipe("list all files")
    assert len(pipe("list all files", timesteps=[19, 9]).code[0]) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"latents": torch.zeros(1, 3, 3)}, r"latents must have shape \(2, "),
        ({"timesteps": [3, 7]}, "strictly decreasing"),
        ({"num_inference_steps": 3, "return_trajectory": [0, 3]}, r"return_trajectory .* from 0 to 2, got \[3\]"),
        ({"num_inference_steps": 3, "return_trajectory": [1.5]}, "return_trajectory"),
        ({"num_inference_steps": 3, "return_trajectory": 2}, "return_trajectory must be True, False or a list"),
    ],
)
def test_bad_latents_or_timesteps(tiny_pipeline, kwargs, message):
    tiny_pipeline.model.train()
    with pytest.raises(ValueError, match=message):
        tiny_pipeline("list all files", num_return_sequences=2, **kwargs)
    assert tiny_pipeline.model.training  # failed before the model was switched to eval mode


def test_a_callback_sees_the_call_and_can_change_guidance(tiny_pipeline, monkeypatch):
    """As in diffusers: `num_timesteps` and `guidance_scale` describe the running call; a callback that sets
    `_guidance_scale` changes the guidance of the steps after it (here: guidance on from the third step)."""
    scales, seen = [], []
    guided_denoise = tiny_pipeline.guided_denoise
    monkeypatch.setattr(tiny_pipeline, "guided_denoise", lambda *a: scales.append(a[5]) or guided_denoise(*a))

    def callback(pipe, step_index, timestep, callback_kwargs):
        seen.append((pipe.num_timesteps, pipe.guidance_scale))
        if step_index == 1:
            pipe._guidance_scale = 3.0
        return callback_kwargs

    seeded(tiny_pipeline, "list all files", callback_on_step_end=callback)
    assert seen == [(5, 1.0), (5, 1.0), (5, 3.0), (5, 3.0), (5, 3.0)]
    assert scales == [1.0, 1.0, 3.0, 3.0, 3.0]


def record_denoised_shapes(pipe, monkeypatch) -> list[tuple[int, int]]:
    """The (rows, canvas positions) of every denoiser call of `pipe`."""
    shapes, denoise = [], pipe.model.denoise
    monkeypatch.setattr(
        pipe.model,
        "denoise",
        lambda latents, *a, **k: shapes.append(tuple(latents.shape[:2])) or denoise(latents, *a, **k),
    )
    return shapes


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_stop_when_stable_finishes_candidates_whose_tokens_hold(overfit_pipeline, scheduler_class, monkeypatch):
    pipe = with_scheduler(overfit_pipeline, scheduler_class)
    shapes = record_denoised_shapes(pipe, monkeypatch)
    prompts = [prompt for prompt, _ in PAIRS]
    output = pipe(
        prompts,
        num_inference_steps=20,
        num_return_sequences=3,
        stop_when_stable=2,
        generator=torch.Generator().manual_seed(0),
    )
    # The memorised code ranks first, from fewer rows and steps (a candidate stopped early may be cut short).
    assert [candidates[0] for candidates in output.code] == [code for _, code in PAIRS]
    rows = [shape[0] for shape in shapes]
    assert rows[0] == 3 * len(PAIRS) and rows == sorted(rows, reverse=True)
    assert sum(rows) < 20 * rows[0]
    # A threshold no candidate reaches changes nothing.
    kwargs = {"num_return_sequences": 2, "output_type": "pt"}
    never = seeded(pipe, ["list all files", "show disk usage"], stop_when_stable=100, **kwargs)
    default = seeded(pipe, ["list all files", "show disk usage"], **kwargs)
    assert torch.equal(never.code, default.code) and never.scores == default.scores


def test_settled_margin_stops_computing_the_committed_tail(overfit_pipeline, monkeypatch):
    pipe = with_scheduler(overfit_pipeline, CodeFusionCommitScheduler)
    shapes = record_denoised_shapes(pipe, monkeypatch)
    canvas = pipe.model.config.max_code_length
    prompts = [prompt for prompt, _ in PAIRS]
    kwargs = {"num_inference_steps": 10, "num_return_sequences": 2, "output_type": "pt"}
    output = pipe(prompts, settled_margin=1, generator=torch.Generator().manual_seed(0), **kwargs)
    lengths = [shape[1] for shape in shapes]
    assert lengths[0] == canvas and lengths[-1] < canvas and lengths == sorted(lengths, reverse=True)
    assert output.code.shape[-1] == canvas  # the cut positions come back as the pad they committed
    texts = pipe.tokenizer.batch_decode(output.code[:, 0], skip_special_tokens=True)
    assert texts == [code for _, code in PAIRS]
    # A margin of the whole canvas cuts nothing: the outputs of the default.
    shapes.clear()
    whole = seeded(pipe, prompts, settled_margin=canvas, output_type="pt")
    assert {shape[1] for shape in shapes} == {canvas}
    assert torch.equal(whole.code, seeded(pipe, prompts, output_type="pt").code)
    # The old name still works, with a deprecation warning, and means the same.
    with pytest.warns(FutureWarning, match="canvas_margin is deprecated"):
        old_name = pipe(prompts, canvas_margin=1, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(old_name.code, output.code) and old_name.settings.settled_margin == 1


@pytest.fixture(scope="module")
def length_pipeline(code_tokenizer):
    """PAIRS memorised with a length head, on canvases of the longest code plus 2 pad positions."""
    return overfit(code_tokenizer, canvas_margin=2, predict_length=True)


def test_predicted_code_length_samples_on_the_canvas_training_saw(length_pipeline, code_tokenizer, monkeypatch):
    pipe = length_pipeline
    prompts = [prompt for prompt, _ in PAIRS]
    lengths = [len(code_tokenizer(code, add_special_tokens=False)["input_ids"]) for _, code in PAIRS]
    states, mask = pipe.encode_prompt(prompts, torch.device("cpu"))
    assert pipe.model.length_logits(states, mask).argmax(dim=-1).tolist() == lengths
    shapes = record_denoised_shapes(pipe, monkeypatch)
    for (prompt, code), length in zip(PAIRS, lengths):  # one prompt a call: a canvas of its own length
        assert seeded(pipe, prompt, num_return_sequences=2, length_beam=1).code[0][0] == code
        assert shapes[-1][1] == length + 2
    # Prompts of different lengths: batches of similar canvases, each prompt as it would be sampled alone.
    shapes.clear()
    latents = torch.randn(2 * len(PAIRS), pipe.model.config.max_code_length, pipe.model.config.latent_dim)
    kwargs = {"num_inference_steps": 5, "num_return_sequences": 2, "return_trajectory": [4], "length_beam": 1}
    output = pipe(prompts, latents=latents, output_type="pt", **kwargs)
    canvases = torch.tensor([length + 2 for length in lengths]).repeat_interleave(2)
    assert {canvas for _, canvas in shapes} == {int(canvases[group].max()) for group in canvas_groups(canvases)}
    assert output.code.shape == (len(PAIRS), 2, max(lengths) + 2)
    for i, prompt in enumerate(prompts):
        alone = pipe(prompt, latents=latents[2 * i : 2 * i + 2], output_type="pt", **kwargs)
        assert torch.equal(output.code[i, :, : lengths[i] + 2], alone.code[0])
        assert (output.code[i, :, lengths[i] + 2 :] == pipe.model.config.pad_token_id).all()
        assert output.scores[i] == pytest.approx(alone.scores[0], abs=1e-5)
        assert output.trajectory[0]["code"][i] == alone.trajectory[0]["code"][0]
    assert [code[0] for code in seeded(pipe, prompts).code] == [code for _, code in PAIRS]
    seeded(pipe, prompts[0], code_length="full")
    assert shapes[-1][1] == pipe.model.config.max_code_length
    seeded(pipe, prompts[0], init_code="ls", strength=0.5)  # refining keeps the whole canvas by default
    assert shapes[-1][1] == pipe.model.config.max_code_length
    pipe.model.config.canvas_margin = None  # as if trained on the whole canvas: sampled there by default
    try:
        seeded(pipe, prompts[0])
        assert shapes[-1][1] == pipe.model.config.max_code_length
    finally:
        pipe.model.config.canvas_margin = 2


@pytest.mark.parametrize("max_padding, allowance", [(1.0, 0), (100.0, 256)])
def test_length_beam_spreads_the_candidates_over_the_likeliest_lengths(
    length_pipeline, monkeypatch, max_padding, allowance
):
    """Candidate i of a prompt samples on the (i % length_beam)-th likeliest length, as it would with that
    code_length alone, in a batch of its own (no padding allowed) or in one batch with the others; the candidates of
    all lengths are ranked together."""
    monkeypatch.setattr(canvas_planning_codefusion, "MAX_CANVAS_PADDING", max_padding)
    monkeypatch.setattr(canvas_planning_codefusion, "CANVAS_PADDING_ALLOWANCE", allowance)
    pipe = length_pipeline
    prompt, margin = PAIRS[0][0], pipe.model.config.canvas_margin
    states, mask = pipe.encode_prompt([prompt], torch.device("cpu"))
    likeliest = (pipe.model.length_logits(states, mask)[0, 1:].topk(2).indices + 1).tolist()
    shapes = record_denoised_shapes(pipe, monkeypatch)
    latents = torch.randn(4, pipe.model.config.max_code_length, pipe.model.config.latent_dim)
    kwargs = {"num_inference_steps": 5, "output_type": "pt"}
    output = pipe(prompt, latents=latents, num_return_sequences=4, length_beam=2, **kwargs)
    canvases = torch.tensor([length + margin for length in likeliest]).repeat(2)
    assert {canvas for _, canvas in shapes} == {int(canvases[group].max()) for group in canvas_groups(canvases)}
    assert output.scores[0] == sorted(output.scores[0], reverse=True)
    longest = max(likeliest) + margin
    expected = []  # (score, token ids padded to the longest canvas) of each length's candidates sampled alone
    for rank, length in enumerate(likeliest):
        alone = pipe(prompt, latents=latents[rank::2], num_return_sequences=2, code_length=length, **kwargs)
        pad = pipe.model.config.pad_token_id
        padded = torch.nn.functional.pad(alone.code[0], (0, longest - alone.code.shape[-1]), value=pad)
        expected += list(zip(alone.scores[0], padded))
    assert sorted(output.scores[0]) == pytest.approx(sorted(score for score, _ in expected), abs=1e-5)
    for score, ids in zip(output.scores[0], output.code[0]):
        assert any(torch.equal(ids, other) for other_score, other in expected if abs(other_score - score) < 1e-5)
    # The default on the predicted canvas: DEFAULT_LENGTH_BEAM lengths, at most one per candidate.
    assert DEFAULT_LENGTH_BEAM == 3
    for k, beam in ((1, 1), (2, 2), (4, 3)):
        default = seeded(pipe, prompt, num_return_sequences=k)
        assert default.code == seeded(pipe, prompt, num_return_sequences=k, length_beam=beam).code
        assert default.settings.length_beam == beam and default.settings.code_length == "predicted"
    # Elsewhere every candidate is on the one canvas, without an error.
    shapes.clear()
    assert seeded(pipe, prompt, num_return_sequences=4, code_length=3).settings.length_beam == 1
    assert {canvas for _, canvas in shapes} == {3 + margin}


def test_canvases_of_a_group_share_each_step(length_pipeline):
    """Candidates are denoised in their canvas groups: the callback runs once per group and step, with the latents
    of that group's candidates on its longest canvas, and a change of guidance lasts for that group's steps."""
    pipe, seen = length_pipeline, []
    states, mask = pipe.encode_prompt([PAIRS[0][0]], torch.device("cpu"))
    likeliest = pipe.model.length_logits(states, mask)[0, 1:].topk(2).indices + 1
    canvases = likeliest + pipe.model.config.canvas_margin
    groups = canvas_groups(canvases)

    def guidance_off_after_step_1(pipe, step_index, timestep, callback_kwargs):
        seen.append((pipe.guidance_scale, tuple(callback_kwargs["latents"].shape[:2])))
        if step_index == 1:
            pipe._guidance_scale = 1.0
        return callback_kwargs

    seeded(
        pipe,
        PAIRS[0][0],
        num_return_sequences=2,
        length_beam=2,
        guidance_scale=3.0,
        callback_on_step_end=guidance_off_after_step_1,
    )
    expected = []
    for group in groups:
        expected += [(scale, (len(group), int(canvases[group].max()))) for scale in (3.0, 3.0, 1.0, 1.0, 1.0)]
    assert seen == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"length_beam": 0}, "length_beam must be None or an integer from 1 to 2 .*num_return_sequences=2"),
        ({"length_beam": 3}, "length_beam must be None or an integer from 1 to 2 .*num_return_sequences=2"),
        ({"length_beam": 1.5}, "length_beam must be None or an integer"),
        ({"length_beam": 2, "code_length": "full"}, "pass code_length='predicted'"),
        ({"length_beam": 2, "code_length": 3}, "pass code_length='predicted'"),
    ],
)
def test_length_beam_is_checked(length_pipeline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        seeded(length_pipeline, PAIRS[0][0], num_return_sequences=2, **kwargs)


def test_code_length_cuts_the_canvas_and_its_noise(tiny_pipeline, monkeypatch):
    """An integer code_length samples on that many positions plus config.canvas_margin, from the first positions
    of the noise of the whole canvas."""
    pipe = tiny_pipeline
    pipe.model.config.canvas_margin = 2
    seen, denoise = [], pipe.model.denoise
    monkeypatch.setattr(
        pipe.model, "denoise", lambda latents, *a, **k: seen.append(latents) or denoise(latents, *a, **k)
    )
    latents = torch.randn(2, pipe.model.config.max_code_length, pipe.model.config.latent_dim)
    kwargs = {"num_inference_steps": 3, "num_return_sequences": 2, "output_type": "pt"}
    output = pipe("list all files", latents=latents, code_length=5, **kwargs)
    assert output.code.shape == (1, 2, 7) and torch.equal(seen[0], latents[:, :7])
    assert seeded(pipe, "list all files", code_length=16, output_type="pt").code.shape[-1] == 16  # at most the canvas


@pytest.mark.parametrize(
    "code_length, match",
    [
        (0, "code_length must be None"),
        (17, "code_length must be None"),
        (2.5, "code_length must be None"),
        ("short", "code_length must be None"),
        ("predicted", "needs a model with a length head"),
    ],
)
def test_code_length_is_checked(tiny_pipeline, code_length, match):
    with pytest.raises(ValueError, match=match):
        seeded(tiny_pipeline, "list all files", code_length=code_length)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"stop_when_stable": 0}, "stop_when_stable must be None"),
        ({"stop_when_stable": 1.5}, "stop_when_stable must be None"),
        ({"settled_margin": -1}, "settled_margin must be None"),
        ({"settled_margin": 17}, "settled_margin must be None"),
        ({"settled_margin": 2, "scheduler": CodeFusionScheduler}, "commits nothing"),
        ({"settled_margin": 2, "canvas_margin": 2}, "canvas_margin is its deprecated name"),
    ],
)
def test_early_stop_arguments_are_checked(tiny_pipeline, kwargs, match):
    pipe = with_scheduler(tiny_pipeline, kwargs.pop("scheduler", CodeFusionCommitScheduler))
    with pytest.raises(ValueError, match=match):
        seeded(pipe, "list all files", **kwargs)


def test_ranking_orders_the_candidates_and_is_checked(overfit_pipeline):
    output = seeded(
        overfit_pipeline, ["list all files", "show disk usage"], num_return_sequences=3, ranking="consensus"
    )
    for scores in output.scores:
        assert scores == sorted(scores, reverse=True) and all(0 <= value <= 1 for value in scores)
    with pytest.raises(ValueError, match="ranking must be one of"):
        seeded(overfit_pipeline, "list all files", ranking="bleu")


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_condition_enhanced_sampling_tells_the_denoiser_one_timestep(overfit_pipeline, scheduler_class, monkeypatch):
    """With condition_enhanced_timestep the denoiser reads that timestep at every step (committed positions keep 0),
    the x0 estimate the true one; the memorised pairs still come back, and the value is checked."""
    pipe = with_scheduler(overfit_pipeline, scheduler_class)
    told, converted = [], []
    denoise, predict = pipe.model.denoise, pipe.scheduler.predict_original_sample
    monkeypatch.setattr(
        pipe.model, "denoise", lambda latents, t, *a, **k: told.append(t) or denoise(latents, t, *a, **k)
    )
    monkeypatch.setattr(
        pipe.scheduler, "predict_original_sample", lambda out, t, x: converted.append(t) or predict(out, t, x)
    )
    last = pipe.scheduler.config.num_train_timesteps - 1
    output = seeded(pipe, [prompt for prompt, _ in PAIRS], condition_enhanced_timestep=last)
    assert [codes[0] for codes in output.code] == [code for _, code in PAIRS]
    assert all(set(t.unique().tolist()) <= {0, last} and (t == last).any() for t in map(torch.as_tensor, told))
    assert [int(torch.as_tensor(t).max()) for t in converted] == pipe.scheduler.timesteps.tolist()
    for bad in (-1, last + 1, 2.5):
        with pytest.raises(ValueError, match="condition_enhanced_timestep must be None"):
            seeded(pipe, "list all files", condition_enhanced_timestep=bad)


def test_init_code_refines_programs_over_the_end_of_the_schedule(overfit_pipeline, monkeypatch):
    """A memorised pair comes back from its own program noised part of the way; only that part of the schedule runs,
    and a prompt's candidates start from its programs in turn."""
    pipe = overfit_pipeline
    shapes = record_denoised_shapes(pipe, monkeypatch)
    prompts, codes = [prompt for prompt, _ in PAIRS], [code for _, code in PAIRS]
    output = seeded(pipe, prompts, init_code=codes, strength=0.6, num_return_sequences=2)
    assert output.code == [[code] * 2 for code in codes]
    assert len(shapes) == round(5 * 0.6)  # seeded() asks for 5 steps
    drafts, code_to_ids = [], pipe.code_to_ids
    monkeypatch.setattr(pipe, "code_to_ids", lambda code: drafts.extend(code) or code_to_ids(code))
    seeded(pipe, ["list all files", "show disk usage"], init_code=[["ls", "ls -la"], "df -h"], num_return_sequences=3)
    assert drafts == ["ls", "ls -la", "ls", "df -h", "df -h", "df -h"]
    shapes.clear()
    seeded(pipe, "list all files", init_code="ls", strength=1e-6)
    assert len(shapes) == 1  # at least one step


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"init_code": "ls", "strength": 0}, "strength must be a number in \\(0, 1\\]"),
        ({"init_code": "ls", "strength": 1.5}, "strength must be a number in \\(0, 1\\]"),
        ({"strength": 0.5}, "pass init_code too"),
        ({"init_code": ["ls", "df"]}, "1 prompt\\(s\\), got 2"),
        ({"init_code": ["  "]}, "every program must be non-empty code"),
        ({"init_code": [[]]}, "a non-empty list of programs"),
        ({"init_code": 3}, "got int"),
        ({"init_code": "ls", "timesteps": [50, 10]}, "without latents and timesteps"),
    ],
)
def test_init_code_arguments_are_checked(tiny_pipeline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        seeded(tiny_pipeline, "list all files", **kwargs)


def test_prompt_embeds_replace_the_prompt(tiny_pipeline):
    prompts = ["list all files", "show disk usage now"]
    tiny_pipeline.model.eval()  # as the pipeline encodes: no dropout
    with torch.no_grad():
        states, mask = tiny_pipeline.encode_prompt(prompts, torch.device("cpu"))
    from_text = seeded(tiny_pipeline, prompts, num_return_sequences=2, output_type="pt")
    from_states = seeded(
        tiny_pipeline, None, prompt_embeds=states, prompt_attention_mask=mask, num_return_sequences=2, output_type="pt"
    )
    assert torch.equal(from_text.code, from_states.code) and from_text.scores == from_states.scores
    width = tiny_pipeline.model.config.hidden_size
    for kwargs, match in [
        ({"prompt": "ls", "prompt_embeds": states}, "not both"),
        ({"prompt_embeds": torch.zeros(2, 3)}, f"\\(num_prompts, prompt_length, {width}\\) tensor"),
        ({"prompt_embeds": states, "prompt_attention_mask": mask[:, :1]}, "prompt_attention_mask must be a tensor of"),
        ({"prompt_embeds": states, "prompt_attention_mask": mask.tolist()}, "got a list"),
        ({"prompt": "ls", "prompt_attention_mask": mask}, "goes with prompt_embeds"),
    ]:
        with pytest.raises(ValueError, match=match):
            tiny_pipeline(**kwargs, num_inference_steps=2)


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_a_model_whose_outputs_are_not_finite_raises(tiny_pipeline, scheduler_class):
    pipe = with_scheduler(copy.deepcopy(tiny_pipeline), scheduler_class)  # the fixture stays intact
    with torch.no_grad():
        pipe.model.denoiser.norm.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="outputs became NaN or inf while sampling"):
        seeded(pipe, "list all files")


def test_scheduler_with_other_betas_is_refused(code_tokenizer):
    """The check compares the schedules themselves, not only their names: an edited beta_end or trained_betas with
    the same num_train_timesteps, noise_schedule and prediction_type would sample on noise levels never trained on."""
    model = CodeFusionModel(tiny_config(code_tokenizer, noise_schedule="linear"))
    trained = model.noise_scheduler.config
    other_betas = torch.linspace(1e-3, 0.05, trained.num_train_timesteps).tolist()
    for changed, field in ((dict(trained_betas=other_betas), "trained_betas"), (dict(beta_end=0.03), "beta_end")):
        scheduler = CodeFusionScheduler.from_config(trained, **changed)
        with pytest.raises(ValueError, match=rf"{field}=.*from_config\(model\.noise_scheduler\.config\)"):
            CodeFusionPipeline(model=model, scheduler=scheduler, tokenizer=code_tokenizer)
    CodeFusionPipeline(model=model, scheduler=CodeFusionScheduler.from_config(trained), tokenizer=code_tokenizer)
