"""The conventions transformers' and diffusers' common tester mixins check, for this project's model, schedulers and
pipeline: save/load round trips, output shapes and dtypes, determinism, callbacks and `num_return_sequences`."""

import pytest
import torch
from conftest import make_pipeline, tiny_config, with_scheduler

from codefusion_hf import CodeFusionCommitScheduler, CodeFusionModel, CodeFusionPipeline, CodeFusionScheduler

SCHEDULERS = [CodeFusionScheduler, CodeFusionCommitScheduler]


def model_inputs(model, tokenizer, rows=3, seed=0):
    """A batch with fixed timesteps and noise, so that a model in eval mode is a function of it."""
    prompts = ["list all files", "show disk usage", "count lines in a.txt"][:rows]
    codes = ["ls -la", "df -h", "wc -l a.txt"][:rows]
    inputs = dict(tokenizer(prompts, padding=True, return_tensors="pt"))
    inputs["labels"] = tokenizer(codes, padding=True, return_tensors="pt")["input_ids"]
    generator = torch.Generator().manual_seed(seed)
    inputs["timesteps"] = torch.randint(0, model.config.num_train_timesteps, (rows,), generator=generator)
    inputs["noise"] = torch.randn(rows, model.config.max_code_length, model.config.latent_dim, generator=generator)
    return inputs


# The model (ModelTesterMixin)


def saved_fields(config: dict) -> dict:
    """A config's fields but those saving and loading fill in: `dtype` (None becomes the weights' dtype), the
    folder it came from, and diffusers' private bookkeeping."""
    return {
        k: saved_fields(v) if isinstance(v, dict) else v
        for k, v in config.items()
        if k != "dtype" and not str(k).startswith("_")
    }


@pytest.mark.parametrize("self_condition", [False, True])
def test_model_save_load_round_trip(code_tokenizer, tmp_path, self_condition):
    model = CodeFusionModel(tiny_config(code_tokenizer, self_condition=self_condition)).eval()
    inputs = model_inputs(model, code_tokenizer)
    model.save_pretrained(tmp_path)
    loaded = CodeFusionModel.from_pretrained(tmp_path).eval()
    assert saved_fields(loaded.config.to_dict()) == saved_fields(model.config.to_dict())
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    expected, output = model(**inputs), loaded(**inputs)
    for name in ("loss", "logits", "row_losses"):
        torch.testing.assert_close(getattr(output, name), getattr(expected, name), rtol=0, atol=0)


def test_model_output_shapes_and_determinism(code_tokenizer):
    model = CodeFusionModel(tiny_config(code_tokenizer)).eval()
    inputs = model_inputs(model, code_tokenizer)
    first, second = model(**inputs), model(**inputs)
    config = model.config
    assert first.loss.shape == () and first.row_losses.shape == (3,)
    assert first.logits.shape == (3, config.max_code_length, config.vocab_size)
    assert first.timesteps.tolist() == inputs["timesteps"].tolist()
    torch.testing.assert_close(first.logits, second.logits, rtol=0, atol=0)
    model.train()  # dropout 0, but training draws self-conditioning and unrolling rows: still a function of the seed
    torch.manual_seed(1)
    trained = model(**inputs).loss
    torch.manual_seed(1)
    assert torch.equal(model(**inputs).loss, trained)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_model_runs_in_half_precision(code_tokenizer, dtype):
    model = CodeFusionModel(tiny_config(code_tokenizer)).eval()
    inputs = model_inputs(model, code_tokenizer)
    reference = model(**inputs)
    model.to(dtype)
    output = model(**inputs | {"noise": inputs["noise"].to(dtype)})
    assert output.logits.dtype == dtype and torch.isfinite(output.loss)
    torch.testing.assert_close(output.loss.float(), reference.loss, rtol=0.05, atol=0.05)


def test_model_dtype_survives_save_and_load(code_tokenizer, tmp_path):
    CodeFusionModel(tiny_config(code_tokenizer)).to(torch.bfloat16).save_pretrained(tmp_path)
    assert CodeFusionModel.from_pretrained(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert CodeFusionModel.from_pretrained(tmp_path, dtype=torch.float32).lm_head.weight.dtype == torch.float32


# The schedulers (SchedulerCommonTest)


def commit_step_inputs(scheduler, sample, vocab_size=11):
    generator = torch.Generator().manual_seed(3)
    code_embeddings = torch.randn(vocab_size, sample.shape[-1], generator=generator)
    logits = torch.randn(*sample.shape[:2], vocab_size, generator=generator)
    return {"logits": logits, "code_embeddings": code_embeddings}


def run_schedule(scheduler, steps=5, seed=0):
    """Every step's output over a whole schedule, from the same sample and model outputs."""
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 6, 4, generator=generator)
    scheduler.set_timesteps(steps)
    outputs = []
    for timestep in scheduler.timesteps:
        model_output = torch.randn(sample.shape, generator=generator)
        extra = commit_step_inputs(scheduler, sample) if isinstance(scheduler, CodeFusionCommitScheduler) else {}
        sample = scheduler.step(model_output, timestep, sample, generator=generator, **extra).prev_sample
        outputs.append(sample)
    return outputs


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_scheduler_save_load_round_trip(scheduler_class, tmp_path):
    scheduler = scheduler_class(num_train_timesteps=100, noise_schedule="sqrt")
    scheduler.save_pretrained(tmp_path)
    loaded = scheduler_class.from_pretrained(tmp_path)
    assert saved_fields(loaded.config) == saved_fields(scheduler.config)
    for expected, output in zip(run_schedule(scheduler), run_schedule(loaded)):
        torch.testing.assert_close(output, expected, rtol=0, atol=0)


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_scheduler_swaps_through_from_config(scheduler_class):
    """Every scheduler builds from another's config, on the same training schedule: how a user swaps samplers."""
    source = CodeFusionScheduler(num_train_timesteps=100, noise_schedule="sqrt")
    swapped = scheduler_class.from_config(source.config)
    torch.testing.assert_close(swapped.alphas_cumprod, source.alphas_cumprod)
    assert type(swapped) is scheduler_class and swapped.config.noise_schedule == "sqrt"


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_scheduler_step_tuple_and_dict_agree_and_timesteps_descend(scheduler_class):
    scheduler = scheduler_class(num_train_timesteps=100)
    scheduler.set_timesteps(7)
    timesteps = scheduler.timesteps
    assert len(timesteps) == 7 and (timesteps[:-1] > timesteps[1:]).all() and 0 <= timesteps.min() < 100
    sample = torch.randn(2, 6, 4)
    model_output = torch.randn(2, 6, 4)
    extra = commit_step_inputs(scheduler, sample) if scheduler_class is CodeFusionCommitScheduler else {}
    as_dict = scheduler.step(model_output, timesteps[0], sample, generator=torch.Generator().manual_seed(0), **extra)
    as_tuple = scheduler.step(
        model_output, timesteps[0], sample, generator=torch.Generator().manual_seed(0), return_dict=False, **extra
    )
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.prev_sample, rtol=0, atol=0)
    assert as_dict.prev_sample.shape == sample.shape and as_dict.prev_sample.dtype == sample.dtype
    torch.testing.assert_close(scheduler.scale_model_input(sample, timesteps[0]), sample * scheduler.init_noise_sigma)


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_scheduler_is_deterministic_per_seed(scheduler_class):
    scheduler = scheduler_class(num_train_timesteps=100)
    first, second = run_schedule(scheduler, seed=4)[-1], run_schedule(scheduler, seed=4)[-1]
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, run_schedule(scheduler, seed=5)[-1])


# The pipeline (PipelineTesterMixin)


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_pipeline_save_load_round_trip(tiny_pipeline, tmp_path, scheduler_class):
    pipe = with_scheduler(tiny_pipeline, scheduler_class)
    call = {"prompt": ["list all files", "show disk usage"], "num_inference_steps": 4, "num_return_sequences": 2}
    expected = pipe(**call, generator=torch.Generator().manual_seed(0))
    pipe.save_pretrained(tmp_path)
    loaded = CodeFusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is scheduler_class
    output = loaded(**call, generator=torch.Generator().manual_seed(0))
    assert output.code == expected.code and output.scores == expected.scores


def test_pipeline_components_rebuild_it(tiny_pipeline):
    rebuilt = CodeFusionPipeline(**tiny_pipeline.components)
    rebuilt.set_progress_bar_config(disable=True)
    assert set(tiny_pipeline.components) == {"model", "scheduler", "tokenizer", "prompt_tokenizer"}
    call = {"prompt": "list all files", "num_inference_steps": 3, "output_type": "pt"}
    torch.testing.assert_close(
        rebuilt(**call, generator=torch.Generator().manual_seed(1)).code,
        tiny_pipeline(**call, generator=torch.Generator().manual_seed(1)).code,
    )


@pytest.mark.parametrize("num_return_sequences", [1, 3])
@pytest.mark.parametrize("output_type", ["text", "pt", "latent"])
def test_pipeline_output_shapes(tiny_pipeline, num_return_sequences, output_type):
    prompts = ["list all files", "show disk usage"]
    output = tiny_pipeline(
        prompts, num_inference_steps=3, num_return_sequences=num_return_sequences, output_type=output_type
    )
    config = tiny_pipeline.model.config
    assert len(output.scores) == 2 and all(len(scores) == num_return_sequences for scores in output.scores)
    if output_type == "text":
        assert [len(candidates) for candidates in output.code] == [num_return_sequences] * 2
        assert all(isinstance(code, str) for candidates in output.code for code in candidates)
    elif output_type == "pt":
        assert output.code.shape == (2, num_return_sequences, config.max_code_length)
        assert output.code.dtype == torch.long
    else:
        assert output.code.shape == (2, num_return_sequences, config.max_code_length, config.latent_dim)
    assert all(a >= b for scores in output.scores for a, b in zip(scores, scores[1:]))  # ranked, best first


def test_pipeline_is_deterministic_per_seed(tiny_pipeline):
    call = {"prompt": "list all files", "num_inference_steps": 3, "num_return_sequences": 2, "output_type": "latent"}
    first = tiny_pipeline(**call, generator=torch.Generator().manual_seed(0)).code
    again = tiny_pipeline(**call, generator=torch.Generator().manual_seed(0)).code
    other = tiny_pipeline(**call, generator=torch.Generator().manual_seed(1)).code
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_pipeline_step_callback_sees_every_step(tiny_pipeline, scheduler_class):
    pipe = with_scheduler(tiny_pipeline, scheduler_class)
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append((step, int(timestep), pipeline.num_timesteps, tuple(tensors["latents"].shape)))
        return {}

    pipe("list all files", num_inference_steps=4, num_return_sequences=2, callback_on_step_end=callback)
    assert [step for step, *_ in seen] == [0, 1, 2, 3]
    assert [timestep for _, timestep, *_ in seen] == pipe.scheduler.timesteps.tolist()
    assert {(steps, shape) for *_, steps, shape in seen} == {(4, (2, pipe.model.config.max_code_length, 16))}


def test_pipeline_runs_in_bfloat16(code_tokenizer):
    pipe = make_pipeline(CodeFusionModel(tiny_config(code_tokenizer)), code_tokenizer)
    pipe.to(dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16
    output = pipe("list all files", num_inference_steps=3, num_return_sequences=2, output_type="latent")
    assert output.code.dtype == torch.bfloat16 and torch.isfinite(torch.tensor(output.scores)).all()
