"""The conventions transformers' and diffusers' common tester mixins check, for this project's model, schedulers and
pipeline: save/load round trips, output shapes and dtypes, determinism, callbacks and `num_return_sequences`."""

import pytest
import torch
from conftest import make_pipeline, tiny_config, with_scheduler

from codefusion_hf import (
    CodeFusionCommitScheduler,
    CodeFusionConfig,
    CodeFusionModel,
    CodeFusionPipeline,
    CodeFusionScheduler,
)
from codefusion_hf.modeling_codefusion import CodeFusionCodeEmbedding

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


# transformers' common tests of outputs and embeddings, for a model whose layers are two stacks over the code canvas
# (the denoiser's, then the decoder's, each cross-attending to the prompt) and whose forward needs no labels.


def common_inputs(tokenizer, rows=3):
    """What transformers' `prepare_config_and_inputs_for_common` gives a base model: a prompt's ids and mask."""
    prompts = ["list all files", "show the disk usage of the home folder", "count lines in a.txt"][:rows]
    return dict(tokenizer(prompts, padding=True, return_tensors="pt"))


def two_stack_model(tokenizer, **overrides):
    return CodeFusionModel(tiny_config(tokenizer, num_denoiser_layers=2, num_decoder_layers=3, **overrides))


def test_forward_without_labels_is_a_samplers_first_step(code_tokenizer):
    """No code to noise: the canvas is the noise itself at the last training step, denoised and decoded as a
    sampler's first step does; no loss terms."""
    model = CodeFusionModel(tiny_config(code_tokenizer, self_condition=True, predict_length=True)).eval()
    inputs, config = common_inputs(code_tokenizer), model.config
    torch.manual_seed(0)
    output = model(**inputs)
    assert output.loss is None and output.noise_loss is None and output.length_loss is None
    assert output.row_losses is None and output.timesteps.tolist() == [config.num_train_timesteps - 1] * 3
    torch.manual_seed(0)
    noise = torch.randn(3, config.max_code_length, config.latent_dim)
    states = model.encode(inputs["input_ids"], inputs["attention_mask"])
    last = torch.tensor(config.num_train_timesteps - 1)
    estimate = model.noise_scheduler.predict_original_sample(
        model.denoise(noise, last, states, inputs["attention_mask"]), last, noise
    )
    expected = model.decode(estimate, states, inputs["attention_mask"])
    torch.testing.assert_close(output.logits, expected, rtol=0, atol=0)
    # Given noise is the canvas (its length the canvas's) at given timesteps; the tuple holds what is set.
    logits, timesteps = model(**inputs, noise=noise[:, :5], timesteps=torch.tensor([3, 40, 99]), return_dict=False)
    assert logits.shape == (3, 5, config.vocab_size) and timesteps.tolist() == [3, 40, 99]
    assert model(**inputs, canvas_length=7).logits.shape[1] == 7
    with pytest.raises(ValueError, match=r"noise has shape \(3, 5, 16\).*canvas_length=7"):
        model(**inputs, noise=noise[:, :5], canvas_length=7)
    with pytest.raises(ValueError, match="canvas_length=0 must lie between 1 and max_code_length=16"):
        model(**inputs, canvas_length=0)


@pytest.mark.parametrize("from_config", [False, True])
def test_hidden_states_output(code_tokenizer, from_config):
    """transformers' `hidden_states` hold both stacks' states (each its input, one per layer, the last normed),
    the denoiser's then the decoder's: the same tensors as the per-stack fields, named as an encoder-decoder's."""
    flags = {"output_hidden_states": True}
    model = two_stack_model(code_tokenizer, **(flags if from_config else {})).eval()
    with torch.no_grad():
        output = model(**common_inputs(code_tokenizer), **({} if from_config else flags))
    config = model.config
    assert len(output.denoiser_hidden_states) == 3 and len(output.decoder_hidden_states) == 4
    assert output.hidden_states == output.denoiser_hidden_states + output.decoder_hidden_states
    assert [tuple(s.shape) for s in output.hidden_states] == [(3, config.max_code_length, config.hidden_size)] * 7
    torch.testing.assert_close(model.lm_head(output.hidden_states[-1]), output.logits, rtol=0, atol=0)
    assert output.attentions is None and output.denoiser_attentions is None


@pytest.mark.parametrize("from_config", [False, True])
def test_attention_outputs(code_tokenizer, from_config):
    """Every layer's self-attention over the canvas and cross-attention over the prompt, denoiser's then
    decoder's, computed explicitly only when asked for; the outputs stay what the fused kernel gives."""
    model = two_stack_model(code_tokenizer).eval()
    inputs = common_inputs(code_tokenizer)
    canvas, prompt, heads = (
        model.config.max_code_length,
        inputs["input_ids"].shape[1],
        model.config.num_attention_heads,
    )
    torch.manual_seed(0)
    fused = model(**inputs, return_dict=False)
    if from_config:
        model.config.output_attentions = True
    torch.manual_seed(0)
    output = model(**inputs, **({} if from_config else {"output_attentions": True}))
    torch.testing.assert_close(output.logits, fused[0])
    assert output.hidden_states is None
    assert output.attentions == output.denoiser_attentions + output.decoder_attentions
    assert output.cross_attentions == output.denoiser_cross_attentions + output.decoder_cross_attentions
    assert [tuple(w.shape) for w in output.attentions] == [(3, heads, canvas, canvas)] * 5
    assert [tuple(w.shape) for w in output.cross_attentions] == [(3, heads, canvas, prompt)] * 5
    for weights in output.attentions + output.cross_attentions:
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    padding = inputs["attention_mask"] == 0
    assert all((weights.transpose(1, 3)[padding] == 0).all() for weights in output.cross_attentions)
    # In the tuple, each flag adds its fields only: 6 attention fields, then 3 state fields.
    as_tuple = model(**inputs, output_attentions=True, return_dict=False)
    assert len(as_tuple) == len(fused) + 6
    assert len(model(**inputs, output_attentions=True, output_hidden_states=True, return_dict=False)) == len(fused) + 9


def test_retain_grad_hidden_states_attentions(code_tokenizer):
    """The first states and attention weights of both stacks are in the graph of the output (the decoder's logits
    read the denoiser's x0 estimate), so their gradients can be kept."""
    model = two_stack_model(code_tokenizer, output_hidden_states=True, output_attentions=True)  # in training mode
    output = model(**common_inputs(code_tokenizer))
    kept = [
        output.hidden_states[0],
        output.attentions[0],
        output.cross_attentions[0],
        output.decoder_hidden_states[0],
        output.decoder_attentions[0],
    ]
    for tensor in kept:
        tensor.retain_grad()
    output[0].flatten()[0].backward(retain_graph=True)
    assert all(tensor.grad is not None and tensor.grad.abs().sum() > 0 for tensor in kept)


def assert_added_embeddings_are_distinct(model, old_num_tokens):
    """Each added code token has an embedding of its own, on the scale of the others: its nearest code embedding
    is itself (transformers' mean resizing would put all of them at the old mean, near the origin)."""
    matrix = model.code_embedding_matrix().detach()
    added = matrix[old_num_tokens:]
    nearest = torch.cdist(added, matrix, compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=-1)
    assert nearest.tolist() == list(range(old_num_tokens, len(matrix)))
    old_norm, added_norm = matrix[:old_num_tokens].norm(dim=-1).mean(), added.norm(dim=-1).mean()
    assert 0.5 < added_norm / old_norm < 1.5


@pytest.mark.parametrize("normalize", [False, True])
def test_resize_tokens_embeddings(code_tokenizer, normalize):
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, normalize_code_embeddings=normalize))
    inputs, vocab_size = common_inputs(code_tokenizer), model.config.vocab_size
    embeddings = model.resize_token_embeddings(vocab_size)
    assert embeddings is model.get_input_embeddings() and embeddings.num_embeddings == vocab_size
    cloned = embeddings.weight.clone()
    embeddings = model.resize_token_embeddings(vocab_size + 10)
    assert type(embeddings) is CodeFusionCodeEmbedding and embeddings.normalize is normalize
    assert model.config.vocab_size == model.vocab_size == embeddings.weight.shape[0] == vocab_size + 10
    torch.testing.assert_close(embeddings.weight[-10:].mean(0), embeddings.weight[:-10].mean(0), atol=1e-3, rtol=0.1)
    assert_added_embeddings_are_distinct(model, vocab_size)
    assert model(**inputs).logits.shape[-1] == vocab_size + 10
    new_ids = torch.arange(vocab_size, vocab_size + 10).view(2, 5)
    assert torch.isfinite(model(input_ids=inputs["input_ids"][:2], labels=new_ids).loss)
    embeddings = model.resize_token_embeddings(vocab_size - 15)
    assert model.config.vocab_size == embeddings.weight.shape[0] == model.lm_head.out_features == vocab_size - 15
    assert torch.equal(embeddings.weight, cloned[: vocab_size - 15])
    assert model(**inputs).logits.shape[-1] == vocab_size - 15
    # pad_to_multiple_of rounds the size up, and every size follows it.
    assert model.resize_token_embeddings(vocab_size + 10, pad_to_multiple_of=1).num_embeddings == vocab_size + 10
    for size, padded in ((vocab_size, 320), (vocab_size + 13, 320), (128, 128)):
        embeddings = model.resize_token_embeddings(size, pad_to_multiple_of=64)
        assert embeddings.num_embeddings == model.config.vocab_size == model.lm_head.out_features == padded
    with pytest.raises(ValueError, match="not and integer"):
        model.resize_token_embeddings(vocab_size, pad_to_multiple_of=1.3)
    # A vocabulary smaller than the embedding width: the old embeddings' covariance is singular.
    torch.manual_seed(0)
    small = CodeFusionModel(CodeFusionConfig.from_preset("tiny", vocab_size=8, normalize_code_embeddings=normalize))
    embeddings = small.resize_token_embeddings(18)
    torch.testing.assert_close(embeddings.weight[-10:].mean(0), embeddings.weight[:-10].mean(0), atol=1e-3, rtol=0.1)
    assert_added_embeddings_are_distinct(small, 8)


def test_resize_embeddings_untied(code_tokenizer):
    """The head is never tied to L(y) (other shapes): resizing resizes it, bias included, with transformers' mean
    initialisation of the added rows; without mean resizing every added row starts as the model initialises it."""
    config = tiny_config(code_tokenizer)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = CodeFusionModel(config)
    inputs, vocab_size = common_inputs(code_tokenizer), config.vocab_size
    model.resize_token_embeddings(vocab_size + 10)
    head = model.get_output_embeddings()
    assert model.config.vocab_size == head.weight.shape[0] == head.bias.shape[0] == vocab_size + 10
    torch.testing.assert_close(head.weight[-10:].mean(0), head.weight[:-10].mean(0), atol=1e-3, rtol=0.1)
    torch.testing.assert_close(head.bias[-10:].mean(0), head.bias[:-10].mean(0), atol=1e-5, rtol=1e-2)
    assert model(**inputs).logits.shape[-1] == vocab_size + 10
    model.resize_token_embeddings(vocab_size - 15)
    head = model.get_output_embeddings()
    assert model.config.vocab_size == head.weight.shape[0] == head.bias.shape[0] == vocab_size - 15
    assert model(**inputs).logits.shape[-1] == vocab_size - 15
    model.resize_token_embeddings(vocab_size + 300, mean_resizing=False)
    added = model.code_embedding.weight[vocab_size - 15 :]
    assert abs(added.std().item() - config.code_embedding_init_std) < 0.1
    assert abs(model.lm_head.weight[vocab_size - 15 :].std().item() - config.initializer_range) < 0.002


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
    assert set(tiny_pipeline.components) == {"model", "scheduler", "tokenizer", "prompt_tokenizer", "retriever"}
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
