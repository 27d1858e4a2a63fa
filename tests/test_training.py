import errno
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import PAIRS, flip_tensor_byte, record_denoiser_passes, tiny_config, write_jsonl
from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from codefusion_hf import (
    CodeFusionConfig,
    CodeFusionModel,
    CodeFusionPipeline,
    training_callbacks_codefusion,
    training_checkpoints_codefusion,
    training_codefusion,
)
from codefusion_hf.data_codefusion import (
    ENCODER_STATES_COLUMN,
    CodeFusionDataCollator,
    CodeFusionPretrainingCollator,
    tokenize_dataset,
)
from codefusion_hf.scheduling_codefusion import CodeFusionScheduler
from codefusion_hf.scheduling_codefusion_commit import CodeFusionCommitScheduler
from codefusion_hf.training_callbacks_codefusion import TimeBudgetProgressCallback
from codefusion_hf.training_checkpoints_codefusion import find_resume_checkpoint
from codefusion_hf.training_codefusion import (
    CodeFusionPretrainer,
    CodeFusionTrainer,
    CodeFusionTrainingArguments,
)

ROOT = Path(__file__).resolve().parents[1]


def training_args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=3e-3,
        max_steps=30,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return CodeFusionTrainingArguments(**(defaults | kwargs))


def pair_dataset(tokenizer, repeat=4):
    data = Dataset.from_dict({"prompt": [p for p, _ in PAIRS] * repeat, "code": [c for _, c in PAIRS] * repeat})
    return data, tokenize_dataset(data, tokenizer, 16, tokenizer, 16)


def code_dataset(tokenizer, repeat=4):
    return tokenize_dataset(Dataset.from_dict({"code": [c for _, c in PAIRS] * repeat}), tokenizer, 16)


def make_trainer(kind, tokenizer, tmp_path, config_overrides=None, **kwargs):
    torch.manual_seed(0)
    model = CodeFusionModel(tiny_config(tokenizer, **(config_overrides or {})))
    if kind == "finetune":
        raw, data = pair_dataset(tokenizer)
        return CodeFusionTrainer(
            model=model,
            args=training_args(tmp_path, **kwargs),
            code_tokenizer=tokenizer,
            train_dataset=data,
            eval_dataset=data,
            data_collator=CodeFusionDataCollator(tokenizer, tokenizer.pad_token_id),
            generation_eval_dataset=raw,
        )
    data = code_dataset(tokenizer)
    collator = CodeFusionPretrainingCollator(
        tokenizer, tokenizer.pad_token_id, language="bash", mask_rate=0.5, max_prompt_length=16
    )
    return CodeFusionPretrainer(
        model=model,
        args=training_args(tmp_path, **kwargs),
        code_tokenizer=tokenizer,
        train_dataset=data,
        eval_dataset=data,
        data_collator=collator,
    )


def first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def test_canvas_margin_trims_the_training_canvas(code_tokenizer, tmp_path, monkeypatch):
    """canvas_margin: training batches denoise their longest code plus the margin, never more than the canvas;
    evaluation keeps the full canvas, as sampling has it."""
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, canvas_margin=2)
    model = trainer.model
    calls = record_denoiser_passes(model, monkeypatch)
    batch = first_batch(trainer)
    model.train()
    trainer.compute_loss(model, batch)
    assert [args[0].shape[1] for args, _ in calls] == [min(batch["labels"].shape[1] + 2, model.config.max_code_length)]
    model.eval()
    trainer.compute_loss(model, batch)
    assert calls[-1][0][0].shape[1] == model.config.max_code_length
    with pytest.raises(ValueError, match="canvas_margin"):
        training_args(tmp_path, canvas_margin=-1)


def test_the_trainer_changes_the_config_only_to_record_its_settings(code_tokenizer, tmp_path, monkeypatch):
    """Every change the trainer makes to `model.config` goes through `record_training_settings`: without it the
    config is the model's own; with it, exactly the loss weights that the arguments override, the canvas margin and
    the smallest timestep trained, with a warning naming the weight replaced."""
    settings = {"canvas_margin": 4, "min_train_timestep": 5, "decoder_loss_weight": 0.5, "noise_loss_weight": 1.0}
    built = CodeFusionModel(tiny_config(code_tokenizer)).config.to_dict() | {"use_cache": False}  # set by Trainer
    monkeypatch.setattr(CodeFusionTrainer, "record_training_settings", lambda self, model, args: None)
    assert make_trainer("finetune", code_tokenizer, tmp_path, **settings).model.config.to_dict() == built
    monkeypatch.undo()
    messages = []
    monkeypatch.setattr(training_codefusion.logger, "warning", messages.append)
    config = make_trainer("finetune", code_tokenizer, tmp_path, **settings).model.config.to_dict()
    changed = {name: value for name, value in config.items() if built[name] != value}
    assert changed == {"canvas_margin": 4, "min_train_timestep": 5, "decoder_loss_weight": 0.5}  # noise's is 1 already
    assert messages == [
        "args.decoder_loss_weight=0.5 replaces model.config.decoder_loss_weight=1.0 (saved with the model)."
    ]


def test_length_head_trains_and_the_margin_is_recorded(code_tokenizer, tmp_path):
    """With predict_length the length loss is logged and falls; the saved model records the canvas_margin it was
    trained with, which sampling on a predicted length adds to it."""
    trainer = make_trainer(
        "finetune", code_tokenizer, tmp_path, config_overrides={"predict_length": True}, canvas_margin=3
    )
    assert trainer.model.config.canvas_margin == 3
    before = trainer.evaluate()["eval_length_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_length_loss"] < before
    assert all("length_loss" in entry for entry in trainer.state.log_history if "loss" in entry)
    trainer.save_model()
    assert CodeFusionConfig.from_pretrained(tmp_path / "out").canvas_margin == 3
    assert "eval_length_loss" not in make_trainer("finetune", code_tokenizer, tmp_path / "plain").evaluate()


def test_group_by_length_groups_by_code_length(code_tokenizer, tmp_path):
    """train_sampling_strategy="group_by_length" batches code of similar length (not prompts: the canvas holds
    the code)."""
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, train_sampling_strategy="group_by_length")
    assert trainer.train_dataset["length"] == [len(labels) for labels in trainer.train_dataset["labels"]]
    assert type(trainer._get_train_sampler()).__name__ == "LengthGroupedSampler"
    trainer.train()


@pytest.mark.parametrize("native", [False, True])
def test_emulated_cpu_bf16_is_warned_about(tmp_path, monkeypatch, native):
    messages = []
    monkeypatch.setattr(training_callbacks_codefusion.logger, "warning", messages.append)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    training_args(tmp_path, bf16=True)
    assert len([m for m in messages if "bf16" in m]) == (0 if native else 1)
    messages.clear()
    training_args(tmp_path)  # fp32: nothing to warn about
    assert not messages


def test_finetune_compute_loss_trains_every_part(code_tokenizer, tmp_path):
    trainer = make_trainer("finetune", code_tokenizer, tmp_path)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, first_batch(trainer))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in trainer.model.parameters())


def test_gradient_accumulation_equals_a_larger_batch(code_tokenizer, tmp_path):
    """Two accumulated micro-batches of 2 rows make the same SGD update as one batch of 4 (same rows, same noise)."""

    def with_fixed_noise(model):  # each row's timestep and noise follow from its code, not from its batch
        config, forward = model.config, model.forward

        def forward_with_fixed_noise(labels, **inputs):
            pad = config.pad_token_id  # the collator pads to the longest row of the batch: seed from the code alone
            rows = [torch.Generator().manual_seed(hash(tuple(row[row != pad].tolist())) % 2**31) for row in labels]
            inputs["timesteps"] = torch.cat(
                [torch.randint(0, config.num_train_timesteps, (1,), generator=g) for g in rows]
            )
            inputs["noise"] = torch.stack(
                [torch.randn(config.max_code_length, config.latent_dim, generator=g) for g in rows]
            )
            return forward(labels=labels, **inputs)

        model.forward = forward_with_fixed_noise

    initial, trained = [], []
    for batch_size, accumulation in [(4, 1), (2, 2)]:
        trainer = make_trainer(
            "finetune",
            code_tokenizer,
            tmp_path,
            config_overrides={"encoder_config": {"dropout_rate": 0.0}},  # tiny_config's dropout is the denoiser's
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            optim="sgd",
            learning_rate=0.5,
            max_grad_norm=0.0,
            warmup_steps=0,
            lr_scheduler_type="constant",
            generation_eval_samples=0,
        )
        trainer.train_dataset = trainer.train_dataset.select(range(4))
        with_fixed_noise(trainer.model)
        initial.append([p.detach().clone() for p in trainer.model.parameters()])
        trainer.train()
        trained.append([p.detach() for p in trainer.model.parameters()])
    for before_one, before_accumulated in zip(*initial):
        torch.testing.assert_close(before_accumulated, before_one, rtol=0, atol=0)
    assert any(not torch.equal(after, before) for after, before in zip(trained[0], initial[0]))
    for one_batch, accumulated in zip(*trained):
        torch.testing.assert_close(accumulated, one_batch, rtol=1e-4, atol=1e-6)


# A denoiser wider than the tiny encoder (32): the encoder's states go through a trained projection, encoder_proj.
WIDER = {"hidden_size": 64}


def test_freeze_encoder_in_finetuning(code_tokenizer, tmp_path):
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, config_overrides=WIDER, freeze_encoder=True)
    model = trainer.model
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.train()
    trainer.compute_loss(model, first_batch(trainer)).backward()
    assert all(p.grad is not None for p in model.encoder_proj.parameters())  # the projection still learns


TWO_ENCODER_LAYERS = {
    "encoder_config": CodeFusionConfig.from_preset("tiny").encoder_config.to_dict() | {"num_layers": 2},
}


def test_top_encoder_layers_train_at_their_own_learning_rate(code_tokenizer, tmp_path):
    trainer = make_trainer(
        "finetune",
        code_tokenizer,
        tmp_path,
        config_overrides=TWO_ENCODER_LAYERS,
        trained_encoder_layers=1,
        encoder_learning_rate=1e-4,
        max_steps=2,
    )
    model = trainer.model
    layers = list(model.encoder.encoder.block)
    assert len(layers) == 2
    assert all(p.requires_grad for p in layers[-1].parameters())
    assert not any(p.requires_grad for layer in layers[:-1] for p in layer.parameters())
    assert not model.encoder.shared.weight.requires_grad and not model.encoder_is_frozen
    assert ENCODER_STATES_COLUMN not in trainer.train_dataset.column_names  # a training encoder is never cached
    before = {name: p.detach().clone() for name, p in model.encoder.named_parameters()}
    trainer.train()
    changed = {name for name, p in model.encoder.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {name for name, p in model.encoder.named_parameters() if p.requires_grad}
    encoder_ids = {id(p) for p in layers[-1].parameters()}
    for group in trainer.optimizer.param_groups:
        in_encoder = {id(p) in encoder_ids for p in group["params"]}
        assert len(in_encoder) == 1  # no group mixes encoder and other parameters
        assert group["initial_lr"] == (1e-4 if in_encoder == {True} else 3e-3)
    assert sum(len(group["params"]) for group in trainer.optimizer.param_groups) == sum(
        p.requires_grad for p in model.parameters()
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"trained_encoder_layers": 0}, "trained_encoder_layers must be at least 1"),
        ({"encoder_learning_rate": 0.0}, "encoder_learning_rate must be positive"),
        ({"freeze_encoder": True, "encoder_learning_rate": 1e-4}, "freeze_encoder=True trains no encoder"),
    ],
)
def test_encoder_training_arguments_are_checked(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        training_args(tmp_path, **kwargs)


def test_more_trained_encoder_layers_than_the_encoder_has(code_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="trained_encoder_layers=9, but the prompt encoder has 2 layers"):
        make_trainer("finetune", code_tokenizer, tmp_path, TWO_ENCODER_LAYERS, trained_encoder_layers=9)


def test_a_frozen_encoder_runs_once_per_dataset(code_tokenizer, tmp_path):
    trainer = make_trainer(
        "finetune", code_tokenizer, tmp_path, config_overrides=WIDER, freeze_encoder=True, max_steps=3
    )
    model = trainer.model
    assert ENCODER_STATES_COLUMN in trainer.train_dataset.column_names
    assert ENCODER_STATES_COLUMN in trainer.eval_dataset.column_names
    batch = first_batch(trainer)
    assert "input_ids" not in batch and batch[ENCODER_STATES_COLUMN].shape[:2] == batch["attention_mask"].shape
    # The cached states give the loss the encoder gives, for the same prompts, draws and weights.
    rows = trainer.train_dataset.select(range(4))
    prompts = CodeFusionDataCollator(code_tokenizer, code_tokenizer.pad_token_id)(
        [{k: row[k] for k in ("input_ids", "attention_mask", "labels")} for row in rows]
    )
    draws = {"timesteps": torch.tensor([0, 5, 10, 15]), "noise": torch.randn(4, 16, model.config.latent_dim)}
    model.eval()
    cached = model(**trainer.data_collator(list(rows)), **draws).loss
    encoded = model(**prompts, **draws).loss
    torch.testing.assert_close(cached, encoded)
    calls = []
    model.encoder.register_forward_hook(lambda *args: calls.append(1))
    trainer.train()
    trainer.evaluate()
    assert calls == []


def test_encoder_states_are_not_cached_when_the_encoder_trains_or_when_asked(code_tokenizer, tmp_path):
    trained = make_trainer("finetune", code_tokenizer, tmp_path)
    asked = make_trainer("finetune", code_tokenizer, tmp_path, freeze_encoder=True, cache_encoder_states=False)
    pretraining = make_trainer("pretrain", code_tokenizer, tmp_path)
    for trainer in (trained, asked, pretraining):
        assert ENCODER_STATES_COLUMN not in trainer.train_dataset.column_names
        assert "input_ids" in first_batch(trainer)


def test_pretrain_compute_loss_freezes_the_encoder(code_tokenizer, tmp_path):
    trainer = make_trainer("pretrain", code_tokenizer, tmp_path, config_overrides=WIDER)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, first_batch(trainer))
    assert torch.isfinite(loss)
    loss.backward()
    model = trainer.model
    assert all(p.grad is None for module in (model.encoder, model.encoder_proj) for p in module.parameters())
    trained = [model.code_embedding, model.denoiser, model.decoder, model.lm_head]
    assert all(p.grad is not None for module in trained for p in module.parameters())


def test_pretrain_tasks_reach_the_model(code_tokenizer, tmp_path, monkeypatch):
    trainer = make_trainer("pretrain", code_tokenizer, tmp_path)
    model = trainer.model
    batch = first_batch(trainer)
    batch["unconditional"] = torch.tensor([True, False, True, False])
    mask_id = code_tokenizer.mask_token_id
    assert (batch["input_ids"] == mask_id).any(), "CPD input must contain masked identifiers"
    encoded, encode = {}, model.encode

    def recording_encode(input_ids, attention_mask):
        encoded["ids"], encoded["states"] = input_ids, encode(input_ids, attention_mask)
        return encoded["states"]

    monkeypatch.setattr(model, "encode", recording_encode)
    calls = record_denoiser_passes(model, monkeypatch)
    trainer.compute_loss(model, batch)
    assert torch.equal(encoded["ids"], batch["input_ids"])  # the masked snippet went through the encoder
    _, _, states, attention_mask, *_ = calls[0][0]  # what the denoiser reads as the prompt
    cpd, noise = ~batch["unconditional"], batch["unconditional"]
    torch.testing.assert_close(states[cpd], encoded["states"][cpd])
    assert not torch.allclose(states[noise], encoded["states"][noise])  # replaced by fresh Gaussian noise
    assert abs(states[noise].std().item() - 1) < 0.3
    assert (attention_mask[noise] == 1).all()


def test_prompt_dropout_replaces_prompts_by_noise_in_finetuning(code_tokenizer, tmp_path, monkeypatch):
    """prompt_dropout_probability: in training, dropped rows read Gaussian noise over an unmasked prompt (phase 1's
    unconditional task), kept rows their encoded prompt, and the encoder still learns from the kept rows; the
    evaluation loss stays fully conditional."""
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, prompt_dropout_probability=0.5)
    model = trainer.model
    encoded, encode = [], model.encode
    calls = record_denoiser_passes(model, monkeypatch)
    monkeypatch.setattr(model, "encode", lambda *args: encoded.append(encode(*args)) or encoded[-1])
    batch = first_batch(trainer)
    batch = {k: v.repeat(8, *[1] * (v.ndim - 1)) for k, v in batch.items()}  # 32 rows: both kinds appear
    model.train()
    torch.manual_seed(0)
    trainer.compute_loss(model, batch).backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    _, _, states, mask, *_ = calls[0][0]  # what the denoiser reads as the prompt
    kept = (states == encoded[0]).flatten(1).all(dim=1)
    assert 0 < kept.sum() < len(kept)
    assert torch.equal(mask[kept], batch["attention_mask"][kept]) and (mask[~kept] == 1).all()
    assert abs(states[~kept].std().item() - 1) < 0.1  # fresh N(0, 1) noise, not a scaled prompt
    model.eval()
    calls.clear()
    encoded.clear()
    trainer.compute_loss(model, batch)
    assert torch.equal(calls[0][0][2], encoded[0])  # every prompt kept


@pytest.mark.parametrize("kind", ["finetune", "pretrain"])
def test_few_steps_reduce_the_loss(kind, code_tokenizer, tmp_path):
    trainer = make_trainer(kind, code_tokenizer, tmp_path)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_decoder_loss"] < before["eval_decoder_loss"]
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all({"noise_loss", "embedding_loss", "decoder_loss"} <= entry.keys() for entry in logged)


@pytest.mark.parametrize("kind", ["finetune", "pretrain"])
def test_eval_loss_is_deterministic(code_tokenizer, tmp_path, kind):
    """Every evaluation draws the same timesteps, noise and (phase 1) tasks, masks and noise prompts."""
    trainer = make_trainer(kind, code_tokenizer, tmp_path)
    first = trainer.evaluate()["eval_loss"]
    if kind == "pretrain":  # training batches between evaluations must not change what evaluation draws
        next(iter(trainer.get_train_dataloader()))
        torch.randn(3)
    assert trainer.evaluate()["eval_loss"] == first


@pytest.mark.parametrize("commit_tokens", [False, True])
def test_generation_metrics_are_logged(code_tokenizer, tmp_path, monkeypatch, commit_tokens):
    trainer = make_trainer(
        "finetune",
        code_tokenizer,
        tmp_path,
        generation_eval_samples=4,
        generation_inference_steps=5,
        generation_rounding="decoder",
        generation_commit_tokens=commit_tokens,
    )
    calls = []
    call = CodeFusionPipeline.__call__
    monkeypatch.setattr(
        CodeFusionPipeline, "__call__", lambda self, *a, **k: calls.append((self, k)) or call(self, *a, **k)
    )
    metrics = trainer.evaluate()
    assert calls and all(k["rounding"] == "decoder" and k["num_inference_steps"] == 5 for _, k in calls)
    scheduler_class = CodeFusionCommitScheduler if commit_tokens else CodeFusionScheduler
    assert all(type(pipe.scheduler) is scheduler_class for pipe, _ in calls)
    trainer.save_pipeline(str(tmp_path / "saved"))  # saved with the default sampler, whichever generation used
    assert type(CodeFusionPipeline.from_pretrained(tmp_path / "saved").scheduler) is CodeFusionScheduler
    assert {"eval_exact_match", "eval_non_empty_rate", "eval_distinct_rate"} <= metrics.keys()
    assert 0 <= metrics["eval_exact_match"] <= 1


@pytest.mark.parametrize("language", ["bash", "sql"])
def test_generation_metrics_score_the_top_candidates_as_evaluation_does(
    code_tokenizer, tmp_path, monkeypatch, language
):
    """Known top-1 outputs for the four prompts (references: ls -la, df -h, find ..., wc -l a.txt): one exact match,
    a second one by template (Bash only), one empty output and three distinct ones. A language the evaluation does not
    know (CPD masks any) is scored as 'other'."""
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, generation_eval_samples=4, language=language)
    outputs = dict(zip([prompt for prompt, _ in PAIRS], ["ls -la", "", "ls -la", "wc -l b.txt"]))
    monkeypatch.setattr(
        CodeFusionPipeline,
        "__call__",
        lambda self, prompts, **k: SimpleNamespace(code=[[outputs[p]] for p in prompts]),
    )
    expected = {"exact_match": 0.25, "non_empty_rate": 0.75, "distinct_rate": 0.75}
    if language == "bash":
        expected["template_match"] = 0.5
    assert trainer.generation_metrics() == expected


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_save_and_resume(code_tokenizer, tmp_path):
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    trainer.train()
    assert find_resume_checkpoint(trainer.args).endswith("checkpoint-4")
    resumed = make_trainer("finetune", code_tokenizer, tmp_path, max_steps=6, save_strategy="steps", save_steps=2)
    counter = CountSteps()
    resumed.add_callback(counter)
    resumed.train(resume_from_checkpoint=find_resume_checkpoint(resumed.args))
    assert counter.steps == [5, 6]


def test_a_run_resumes_from_its_folder_copied_elsewhere(code_tokenizer, tmp_path):
    """Runs add up across machines: the output folder, moved anywhere, resumes with the same command pointed at it."""
    first = tmp_path / "machine-a"
    trainer = make_trainer("finetune", code_tokenizer, first, max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    moved = tmp_path / "machine-b" / "elsewhere"
    shutil.copytree(first / "out", moved / "out")
    shutil.rmtree(first)
    resumed = make_trainer("finetune", code_tokenizer, moved, max_steps=4, save_strategy="steps", save_steps=2)
    counter = CountSteps()
    resumed.add_callback(counter)
    resumed.train(resume_from_checkpoint=find_resume_checkpoint(resumed.args))
    assert counter.steps == [3, 4] and (moved / "out" / "checkpoint-4").is_dir()


def test_resuming_with_another_learning_rate_is_refused(code_tokenizer, tmp_path, monkeypatch):
    """Trainer would keep the checkpoint's rate and ignore the new one: refused, saying both rates and the ways out."""
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    messages = []
    monkeypatch.setattr(training_checkpoints_codefusion.logger, "warning", messages.append)
    assert find_resume_checkpoint(training_args(tmp_path, max_steps=2)).endswith("checkpoint-2")
    assert messages == []
    with pytest.raises(ValueError) as refused:
        find_resume_checkpoint(training_args(tmp_path, max_steps=2, learning_rate=1e-4))
    message = str(refused.value)
    assert "checkpoint-2" in message and "starts from 0.003" in message and "learning_rate=0.0001" in message
    assert "--learning_rate 0.003" in message and "another output_dir" in message and "--model_name_or_path" in message


def test_resuming_with_another_schedule_says_what_it_does_and_does_it(code_tokenizer, tmp_path, monkeypatch):
    """The checkpoint records the schedule's arguments; resumed with another length, the run says so and does what
    it says: the first step after resuming keeps the rate the checkpoint's schedule had set, the later ones follow
    the new schedule."""
    schedule = {"lr_scheduler_type": "linear", "save_strategy": "steps", "save_steps": 2, "logging_steps": 1}
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, max_steps=4, **schedule)
    trainer.train()
    recorded = json.loads((tmp_path / "out" / "checkpoint-2" / "schedule.json").read_text())
    assert recorded["max_steps"] == 4 and recorded["lr_scheduler_type"] == "linear"
    messages = []
    monkeypatch.setattr(training_checkpoints_codefusion.logger, "warning", messages.append)
    shutil.rmtree(tmp_path / "out" / "checkpoint-4")
    resumed = make_trainer("finetune", code_tokenizer, tmp_path, max_steps=8, **schedule)
    resumed.train(resume_from_checkpoint=find_resume_checkpoint(resumed.args))
    assert len(messages) == 1 and "max_steps: 4 -> 8" in messages[0] and "follows the new values" in messages[0]
    fresh = make_trainer("finetune", code_tokenizer, tmp_path / "fresh", max_steps=8, **schedule)
    fresh.train()

    def rates(run):
        return {entry["step"]: entry["learning_rate"] for entry in run.state.log_history if "learning_rate" in entry}

    assert {step: rates(resumed)[step] for step in range(4, 9)} == {step: rates(fresh)[step] for step in range(4, 9)}
    assert math.isclose(rates(resumed)[3], 3e-3 * (4 - 2) / 4)  # step 3 of the 4-step schedule


@pytest.mark.parametrize("eval_strategy", ["no", "steps"])
def test_max_train_minutes_stops_with_a_checkpoint(code_tokenizer, tmp_path, eval_strategy):
    """Stopped on the clock, a run saves its last checkpoint, and evaluates it when the run evaluates (every 500
    steps here), so that load_best_model_at_end chooses among all checkpoints, the annealed last one included."""
    trainer = make_trainer(
        "finetune",
        code_tokenizer,
        tmp_path,
        max_steps=1000,
        max_train_minutes=0.0,
        eval_strategy=eval_strategy,
        eval_steps=500,
        save_strategy="steps",
        save_steps=500,
    )
    trainer.train()
    assert trainer.state.global_step == 1
    assert (tmp_path / "out" / "checkpoint-1" / "model.safetensors").is_file()
    evaluated = [row["step"] for row in trainer.state.log_history if "eval_loss" in row]
    assert evaluated == ([1] if eval_strategy == "steps" else [])


def test_time_budget_progress_bar(code_tokenizer, tmp_path, monkeypatch):
    """With max_train_minutes the training bar counts the time budget, not max_steps, and names the steps done."""
    trainer = make_trainer(
        "finetune", code_tokenizer, tmp_path, max_steps=3, max_train_minutes=2.0, disable_tqdm=False
    )
    callbacks = [type(c) for c in trainer.callback_handler.callbacks]
    assert TimeBudgetProgressCallback in callbacks and ProgressCallback not in callbacks
    (bar,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, TimeBudgetProgressCallback)]
    monkeypatch.setattr(bar, "on_train_end", lambda *args, **kwargs: None)  # keep the bar to look at it
    # A fake clock 30 s further at every reading: the bar follows it, up to the budget.
    seconds = iter(range(0, 10**6, 30))
    monkeypatch.setattr(training_callbacks_codefusion, "time", SimpleNamespace(monotonic=lambda: float(next(seconds))))
    positions = []
    update = bar.on_step_end
    monkeypatch.setattr(bar, "on_step_end", lambda *a, **k: update(*a, **k) or positions.append(bar.training_bar.n))
    trainer.train()
    assert bar.training_bar.total == 120 and bar.training_bar.unit == "s" and bar.current_step == 3
    assert positions == sorted(positions) and positions[0] > 0 and positions[-1] <= 120
    assert bar.training_bar.postfix == "step=3"
    quiet = make_trainer("finetune", code_tokenizer, tmp_path, max_train_minutes=2.0, disable_tqdm=True)
    assert not any(isinstance(c, ProgressCallback) for c in quiet.callback_handler.callbacks)


def test_lr_decay_minutes_anneals_over_the_end_of_the_time_budget(code_tokenizer, tmp_path, monkeypatch):
    """A fake clock that advances one minute at every reading (the start, then once per optimizer step): the rate
    stays at the schedule's until 4 minutes are left, falls linearly to 0 at 10 minutes, and training stops after."""
    minutes = iter(range(1000))
    monkeypatch.setattr(training_callbacks_codefusion, "time", SimpleNamespace(monotonic=lambda: 60.0 * next(minutes)))
    trainer = make_trainer(
        "finetune",
        code_tokenizer,
        tmp_path,
        max_steps=1000,
        max_train_minutes=10,
        lr_decay_minutes=4,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
    )
    trainer.train()
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    # step k uses the rate set by the clock after step k - 1 (k - 1 minutes); step 11 ends past the 10 minutes
    assert rates == pytest.approx([1e-3] * 7 + [7.5e-4, 5e-4, 2.5e-4, 0.0])
    assert trainer.state.global_step == 11


def test_lr_decay_minutes_bad_input(tmp_path):
    with pytest.raises(ValueError, match="lr_decay_minutes needs max_train_minutes"):
        training_args(tmp_path, lr_decay_minutes=1)
    with pytest.raises(ValueError, match="lr_decay_minutes=20 must be positive and at most max_train_minutes=10"):
        training_args(tmp_path, max_train_minutes=10, lr_decay_minutes=20)


def test_resume_skips_an_incomplete_or_damaged_last_checkpoint(code_tokenizer, tmp_path, monkeypatch):
    """A last checkpoint with a file missing or unloadable (model, Trainer state, optimizer, schedule, random states:
    Trainer would resume without the last three in silence) is skipped for the last complete one, with a warning
    naming it and why; given explicitly, it is an error, and so is an output_dir with no complete checkpoint."""
    with pytest.raises(ValueError, match="does not exist"):
        find_resume_checkpoint(training_args(tmp_path, resume_from_checkpoint=str(tmp_path / "nowhere")))
    out = tmp_path / "out"
    (out / "checkpoint-1.tmp" / "checkpoint-1").mkdir(parents=True)  # a first save that never finished
    messages = []
    monkeypatch.setattr(training_checkpoints_codefusion.logger, "warning", messages.append)
    assert find_resume_checkpoint(training_args(tmp_path)) is None
    assert len(messages) == 1 and "checkpoint-1.tmp (a save that never finished" in messages[0]
    assert "starting afresh" in messages[0]
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    assert sorted(os.listdir(out)) == ["checkpoint-1", "checkpoint-2"]  # the save at step 1 cleared the leftover
    first, last = out / "checkpoint-1", out / "checkpoint-2"
    shutil.copytree(last, tmp_path / "complete")
    damages = [  # file, new content (None: removed; a function: how it is damaged), what the message says
        ("model.safetensors", b"garbage", "model.safetensors is corrupted"),
        ("model.safetensors", flip_tensor_byte, "model.safetensors is damaged: the sha256 of its tensor data"),
        ("trainer_state.json", None, "trainer_state.json is missing"),
        ("optimizer.pt", None, "optimizer.pt is missing"),
        ("scheduler.pt", b"garbage", "scheduler.pt is corrupted"),
        ("rng_state.pth", b"", "rng_state.pth is corrupted"),
    ]
    for name, content, problem in damages:
        shutil.rmtree(last)
        shutil.copytree(tmp_path / "complete", last)
        if content is None:
            (last / name).unlink()
        elif callable(content):
            content(last / name)
        else:
            (last / name).write_bytes(content)
        messages.clear()
        assert find_resume_checkpoint(trainer.args) == str(first)
        assert len(messages) == 1 and f"Resuming from {first}" in messages[0]
        assert re.search(f"skipping {re.escape(str(last))} \\(.*{problem}", messages[0]), messages[0]
        with pytest.raises(ValueError, match=f"{re.escape(str(last))} cannot be resumed from: .*{problem}"):
            find_resume_checkpoint(training_args(tmp_path, resume_from_checkpoint=str(last)))
    # Saved with save_only_model=True: no optimizer, schedule or random states, which only that flag does not need.
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (last / name).unlink()
    with pytest.raises(ValueError, match="missing \\(saved with save_only_model=True\\? Pass --save_only_model True"):
        find_resume_checkpoint(training_args(tmp_path, resume_from_checkpoint=str(last)))
    messages.clear()
    assert find_resume_checkpoint(training_args(tmp_path, max_steps=2, save_only_model=True)) == str(last)
    assert messages == []
    (last / "model.safetensors").write_bytes(b"garbage")
    (first / "optimizer.pt").unlink()
    with pytest.raises(ValueError, match="No checkpoint in .* can be resumed from: .*checkpoint-2 .*checkpoint-1 "):
        find_resume_checkpoint(trainer.args)


def test_checkpoints_are_renamed_into_place_once_complete(code_tokenizer, tmp_path, monkeypatch):
    """Trainer writes a checkpoint in place; CodeFusionTrainer writes it into checkpoint-N.tmp and renames it once
    complete, schedule.json included, then rotates: with save_total_limit=2 the best (the first) and the last
    stay, the best recorded at its final path."""
    trainer = make_trainer(
        "finetune",
        code_tokenizer,
        tmp_path,
        max_steps=3,
        save_strategy="steps",
        save_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        metric_for_best_model="eval_loss",
        save_total_limit=2,
    )
    monkeypatch.setattr(trainer, "evaluate", lambda **kwargs: {"eval_loss": float(trainer.state.global_step)})
    out, seen = tmp_path / "out", []
    save_rng_state = trainer._save_rng_state
    monkeypatch.setattr(
        trainer, "_save_rng_state", lambda folder: seen.append((folder, os.listdir(out))) or save_rng_state(folder)
    )
    trainer.train()
    assert [folder for folder, _ in seen] == [str(out / f"checkpoint-{n}.tmp" / f"checkpoint-{n}") for n in (1, 2, 3)]
    assert all(f"checkpoint-{n}" not in listing for n, (_, listing) in zip((1, 2, 3), seen))
    assert trainer.state.best_model_checkpoint == str(out / "checkpoint-1")  # the lowest eval_loss
    assert sorted(os.listdir(out)) == ["checkpoint-1", "checkpoint-3"]
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(out / "checkpoint-1")
    assert all((out / name / "schedule.json").is_file() for name in ("checkpoint-1", "checkpoint-3"))


class Killed(BaseException):
    """A kill in the middle of a save: no `except Exception` cleans up after it."""


def test_a_save_killed_halfway_resumes_from_the_last_complete_checkpoint(code_tokenizer, tmp_path, monkeypatch):
    """A save killed after part of its files leaves checkpoint-4.tmp, never a checkpoint-4: resuming says so, goes on
    from checkpoint-2 and ends with the weights of the run that was not killed; its own save clears the leftover."""
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    save_rng_state = trainer._save_rng_state

    def killed_at_step_4(folder):
        if trainer.state.global_step == 4:
            raise Killed
        save_rng_state(folder)

    monkeypatch.setattr(trainer, "_save_rng_state", killed_at_step_4)  # after the model, optimizer and schedule
    with pytest.raises(Killed):
        trainer.train()
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-4.tmp"]
    assert (out / "checkpoint-4.tmp" / "checkpoint-4" / "optimizer.pt").is_file()
    messages = []
    monkeypatch.setattr(training_checkpoints_codefusion.logger, "warning", messages.append)
    resumed = make_trainer("finetune", code_tokenizer, tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=find_resume_checkpoint(resumed.args))
    assert len(messages) == 1 and f"Resuming from {out / 'checkpoint-2'}" in messages[0]
    assert "checkpoint-4.tmp (a save that never finished" in messages[0]
    trained = trainer.model.state_dict()  # trained through step 4 when its save was killed
    assert all(torch.equal(tensor, trained[name]) for name, tensor in resumed.model.state_dict().items())
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-4"]


def test_a_full_disk_during_a_save_is_named_and_leaves_the_last_checkpoint(code_tokenizer, tmp_path, monkeypatch):
    """A full disk while a checkpoint is written: an error naming the folder and the fix, not a traceback deep in
    torch, and no trace of the partial checkpoint, so that resuming takes the one before."""
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    save = torch.save

    def save_to_a_full_disk(obj, path, *args, **kwargs):
        if "checkpoint-4" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_to_a_full_disk)  # optimizer.pt, after model.safetensors
    out = tmp_path / "out"
    message = f"No space left on device to save checkpoint-4 in {re.escape(str(out))} .*: free some space"
    with pytest.raises(OSError, match=message + " there or choose another output_dir"):
        trainer.train()
    assert sorted(os.listdir(out)) == ["checkpoint-2"]  # no checkpoint-4, no staging folder
    assert find_resume_checkpoint(trainer.args) == str(out / "checkpoint-2")


def test_non_finite_loss_stops_training(code_tokenizer, tmp_path):
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, max_steps=3, save_strategy="steps", save_steps=1)
    trainer.model.config.decoder_loss_weight = math.inf
    with pytest.raises(RuntimeError, match="loss became inf at step 0"):
        trainer.train()
    assert not (tmp_path / "out" / "checkpoint-1").exists()


def test_bad_training_arguments(tmp_path):
    with pytest.raises(ValueError, match="cpd_mask_rate"):
        training_args(tmp_path, cpd_mask_rate=1.5)
    with pytest.raises(ValueError, match="prompt_dropout_probability"):
        training_args(tmp_path, prompt_dropout_probability=-0.1)
    with pytest.raises(ValueError, match="generation_rounding"):
        training_args(tmp_path, generation_rounding="argmax")
    with pytest.raises(ValueError, match="timestep_bias_strategy must be one of"):
        training_args(tmp_path, timestep_bias_strategy="late")
    with pytest.raises(ValueError, match="timestep_bias_multiplier"):
        training_args(tmp_path, timestep_bias_multiplier=0)
    with pytest.raises(ValueError, match="timestep_bias_portion"):
        training_args(tmp_path, timestep_bias_portion=0)
    with pytest.raises(ValueError, match="min_train_timestep must be at least 0"):
        training_args(tmp_path, min_train_timestep=-1)


def test_min_train_timestep_clips_the_smallest_noise(code_tokenizer, tmp_path, monkeypatch):
    """No timestep below min_train_timestep is drawn, alone or with a bias, and the rest keep their ratios."""
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, min_train_timestep=30)  # of the tiny model's 100
    assert trainer.model.config.min_train_timestep == 30  # recorded: the pipeline samples at or above it
    weights = trainer.timestep_weights(1200)
    assert weights[:30].sum() == 0 and torch.allclose(weights[30:], torch.full((1170,), 1 / 1170))
    biased = make_trainer(
        "finetune",
        code_tokenizer,
        tmp_path,
        min_train_timestep=30,
        timestep_bias_strategy="later",
        timestep_bias_multiplier=2.0,
    ).timestep_weights(1200)
    assert biased[:30].sum() == 0 and torch.isclose(biased[900] / biased[30], torch.tensor(2.0))
    drawn = []
    forward = CodeFusionModel.forward
    monkeypatch.setattr(
        CodeFusionModel, "forward", lambda self, **k: drawn.append(k.get("timesteps")) or forward(self, **k)
    )
    trainer.model.train()
    trainer.compute_loss(trainer.model, first_batch(trainer))
    assert drawn[0].min() >= 30
    with pytest.raises(ValueError, match="min_train_timestep=1200 leaves no timestep to train on"):
        trainer.args.min_train_timestep = 1200
        trainer.timestep_weights(1200)


def test_loss_aware_timesteps_reach_the_model_with_their_weights(code_tokenizer, tmp_path, monkeypatch):
    trainer = make_trainer("finetune", code_tokenizer, tmp_path, loss_aware_timesteps=True, max_steps=3)
    seen = []
    forward = CodeFusionModel.forward
    monkeypatch.setattr(CodeFusionModel, "forward", lambda self, **k: seen.append(k) or forward(self, **k))
    trainer.train()
    drawn = [k for k in seen if "row_loss_weights" in k]
    assert len(drawn) == 3 and all(k["timesteps"].shape == k["row_loss_weights"].shape == (4,) for k in drawn)
    assert int(trainer.timestep_sampler.counts.sum()) == 3 * 4  # every training row's loss was recorded
    with pytest.raises(ValueError, match="loss_aware_timesteps chooses the timestep distribution itself"):
        training_args(tmp_path, loss_aware_timesteps=True, timestep_bias_strategy="later")


@pytest.mark.parametrize("kind", ["finetune", "pretrain"])
def test_biased_timesteps_reach_the_model(kind, code_tokenizer, tmp_path, monkeypatch):
    """In both phases the trainer hands the model timesteps drawn from its weights (a huge multiplier: only the
    noisiest quarter); without a bias the model draws uniformly itself."""
    drawn = []
    forward = CodeFusionModel.forward
    monkeypatch.setattr(
        CodeFusionModel, "forward", lambda self, **k: drawn.append(k.get("timesteps")) or forward(self, **k)
    )
    for strategy in ("later", "none"):
        trainer = make_trainer(
            kind, code_tokenizer, tmp_path, timestep_bias_strategy=strategy, timestep_bias_multiplier=1e9
        )
        trainer.model.train()
        drawn.clear()
        trainer.compute_loss(trainer.model, first_batch(trainer))
        num_train_timesteps = trainer.model.config.num_train_timesteps
        if strategy == "later":
            assert drawn[0].min() >= num_train_timesteps - num_train_timesteps // 4
        else:
            assert drawn == [None]


HASH_WEIGHTS = """
import hashlib, os, sys
sys.path.insert(0, os.path.join(os.environ["REPO"], "examples", "text_to_code"))
import finetune
trainer = finetune.main()
digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in trainer.model.parameters())).hexdigest()
with open(os.path.join(os.environ["HASH_DIR"], f"rank{trainer.args.process_index}.txt"), "w") as f:
    f.write(f"{trainer.args.world_size} {trainer.state.global_step} {digest}")
"""


def test_two_process_finetune(code_tokenizer, tmp_path):
    """finetune.py with 2 CPU processes (torch.distributed, gloo): completes, and both ranks hold identical weights."""
    code_tokenizer.save_pretrained(tmp_path / "tokenizer")
    data = write_jsonl(tmp_path / "train.jsonl", [{"prompt": p, "code": c} for p, c in PAIRS] * 4)
    (tmp_path / "hash_weights.py").write_text(HASH_WEIGHTS)
    env = os.environ | {"REPO": str(ROOT), "HASH_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        str(tmp_path / "hash_weights.py"),
        "--train_file",
        data,
        "--tokenizer_name_or_path",
        str(tmp_path / "tokenizer"),
        "--preset",
        "tiny",
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "2",
        "--report_to",
        "none",
        "--use_cpu",
        "True",
        "--disable_tqdm",
        "True",
        "--save_strategy",
        "no",
        "--max_train_minutes",  # the clock is read on rank 0 and broadcast: same rates, same stopping step
        "60",
        "--lr_decay_minutes",
        "60",
        "--prompt_dropout_probability",  # the prompt is encoded outside the DDP wrapper: its gradients still sync
        "0.5",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [(tmp_path / f"rank{i}.txt").read_text().split() for i in range(2)]
    assert ranks[0] == ranks[1] and ranks[0][:2] == ["2", "3"]  # world size 2, 3 steps, same weights
    assert (tmp_path / "out" / "model_index.json").is_file()


# Each rank: both phases' trainers with FSDP2 applied by hand (accelerate enables FSDP only on GPUs), one training
# and one evaluation loss, phase 2's generation metrics, then save_pipeline; rank 0 checks the saved weights.
FSDP_STEPS = """
import json, os, pathlib, sys
import torch, torch.distributed as dist
sys.path.insert(0, os.environ["TESTS"])
dist.init_process_group("gloo")
from torch.distributed.fsdp import fully_shard
from transformers.models.t5.modeling_t5 import T5Block
from conftest import PAIRS
from codefusion_hf import CodeFusionPipeline, train_code_tokenizer
from codefusion_hf.modeling_codefusion import CodeFusionLayer
from test_training import first_batch, make_trainer

out = pathlib.Path(os.environ["OUT"])
tokenizer = train_code_tokenizer([text for pair in PAIRS for text in pair] * 5, vocab_size=300, min_frequency=1)
report = {}
for kind in ("pretrain", "finetune"):
    extra = {"prompt_dropout_probability": 0.5, "generation_eval_samples": 2} if kind == "finetune" else {}
    # Rank 0 self-conditions and unrolls (almost surely) no row, rank 1 every row: both must run the same layers.
    share = 1e-9 if dist.get_rank() == 0 else 1.0
    overrides = {"self_condition": True, "self_condition_probability": share, "unroll_probability": share}
    trainer = make_trainer(kind, tokenizer, out / kind, config_overrides=overrides, **extra)
    model = trainer.model
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for module in model.modules():
        if isinstance(module, (CodeFusionLayer, T5Block)):
            fully_shard(module)
    fully_shard(model)
    batch = first_batch(trainer)
    model.train()
    trainer.compute_loss(model, batch).backward()
    model.eval()
    report[kind] = {"eval_loss": trainer.compute_loss(model, batch).item()}
    if kind == "finetune":
        report[kind]["generation"] = trainer.generation_metrics()
    trainer.save_pipeline(str(out / kind / "pipeline"))
    dist.barrier()
    if dist.get_rank() == 0:
        saved = CodeFusionPipeline.from_pretrained(out / kind / "pipeline").model.state_dict()
        report[kind]["saved_as_before"] = all(torch.equal(saved[name], weights[name]) for name in saved)
(out / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))
dist.destroy_process_group()
"""


def test_both_phases_under_fsdp2(tmp_path):
    """Under FSDP2 the parameters are sharded outside the model's forward: the prompt encoding (phase 1's
    unconditional rows, prompt dropout) must happen inside it, generation and saving must gather them, and every
    process must run the same layers (the gradient-free passes run on no rows rather than not at all)."""
    (tmp_path / "fsdp_steps.py").write_text(FSDP_STEPS)
    env = os.environ | {"TESTS": str(ROOT / "tests"), "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(tmp_path / "fsdp_steps.py")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for report in reports:
        assert all(math.isfinite(report[kind]["eval_loss"]) for kind in ("pretrain", "finetune"))
        assert {"exact_match", "template_match", "non_empty_rate"} <= report["finetune"]["generation"].keys()
    assert reports[0]["finetune"]["generation"] == reports[1]["finetune"]["generation"]  # the same generation
    assert reports[0]["pretrain"]["saved_as_before"] and reports[0]["finetune"]["saved_as_before"]
