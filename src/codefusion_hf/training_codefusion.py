"""Training CodeFusion with the transformers `Trainer`: phase 1 (code-only pre-training) and phase 2 (fine-tuning)."""

import errno
import json
import os
import platform
import re
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, SCALER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import safe_globals
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import logging

from .constants import ROUNDINGS
from .data_codefusion import CodeFusionDataCollator, CodeFusionPretrainingCollator, add_encoder_states
from .hub_codefusion import check_readable
from .metrics import exact_match, template_match
from .modelcard_codefusion import hub_model_id
from .modeling_codefusion import CodeFusionModel
from .pipeline_codefusion import CodeFusionPipeline
from .scheduling_codefusion import CodeFusionScheduler
from .scheduling_codefusion_commit import CodeFusionCommitScheduler

logger = logging.get_logger(__name__)

LOSS_TERMS = ("noise_loss", "embedding_loss", "decoder_loss")
TIMESTEP_BIAS_STRATEGIES = ("none", "later", "earlier")


@dataclass
class CodeFusionTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the knobs of CodeFusion's two training phases."""

    unconditional_probability: float = field(
        default=0.5,
        metadata={
            "help": "Phase 1: share of rows trained unconditionally (prompt encoding replaced by Gaussian noise); "
            "the rest do code-specific continuous paragraph denoising (CPD)."
        },
    )
    cpd_mask_rate: float = field(
        default=0.3, metadata={"help": "Phase 1: probability of masking each identifier or keyword for CPD."}
    )
    language: str = field(
        default="bash", metadata={"help": "Language of the code, for CPD masking: 'python', 'bash' or any other."}
    )
    prompt_dropout_probability: float = field(
        default=0.0,
        metadata={
            "help": "Phase 2: share of rows whose prompt encoding is replaced by Gaussian noise, as in phase 1's "
            "unconditional task, so that the model keeps an unconditional mode for the pipeline's guidance_scale "
            "(classifier-free guidance; not in the paper). 0 (default): every row is conditional."
        },
    )
    freeze_encoder: bool = field(
        default=False, metadata={"help": "Phase 2: keep the prompt encoder frozen (phase 1 always freezes it)."}
    )
    encoder_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Phase 2 with a trained encoder: the learning rate of the prompt encoder's parameters, scheduled "
            "like learning_rate (a pretrained encoder usually wants a lower one). None: learning_rate."
        },
    )
    trained_encoder_layers: int | None = field(
        default=None,
        metadata={
            "help": "Phase 2: train only the top this many layers of the prompt encoder; its embeddings and lower "
            "layers stay frozen. None: the whole encoder (unless freeze_encoder)."
        },
    )
    cache_encoder_states: bool = field(
        default=True,
        metadata={
            "help": "Phase 2 with a frozen encoder: encode the training and evaluation prompts once, before "
            "training, and train on the cached states (datasets caches them on disk with the data) instead of "
            "running the encoder at every step. The states are the same; only the time changes."
        },
    )
    noise_loss_weight: float | None = field(default=None, metadata={"help": "Overrides config.noise_loss_weight."})
    embedding_loss_weight: float | None = field(
        default=None, metadata={"help": "Overrides config.embedding_loss_weight."}
    )
    decoder_loss_weight: float | None = field(default=None, metadata={"help": "Overrides config.decoder_loss_weight."})
    timestep_bias_strategy: str = field(
        default="none",
        metadata={
            "help": "Draw training timesteps non-uniformly (as diffusers' SDXL training script): 'later' favours the "
            "noisiest steps, where generation starts and the prompt must decide the code; 'earlier' the cleanest; "
            "'none' draws uniformly (the paper).",
        },
    )
    timestep_bias_multiplier: float = field(
        default=1.0, metadata={"help": "How many times more often the biased timesteps are drawn."}
    )
    timestep_bias_portion: float = field(
        default=0.25, metadata={"help": "Share of the T timesteps that are biased (the latest or earliest ones)."}
    )
    loss_aware_timesteps: bool = field(
        default=False,
        metadata={
            "help": "Draw training timesteps by the root mean square of their recent losses (improved DDPM's "
            "second-moment sampler, as GENIE and DiffuSeq train), each row's loss weighted so that the objective "
            "stays the uniform one; uniform until every timestep bucket has its history. Not with timestep_bias_*."
        },
    )
    min_train_timestep: int = field(
        default=0,
        metadata={
            "help": "Draw training timesteps from [min_train_timestep, T) only: DINOISER's clipping of the smallest "
            "noise scales (Ye et al., 2023), at which the noisy embedding is still nearest its own token, so the "
            "step teaches little. 0 (default): every step (the paper). Combines with timestep_bias_*."
        },
    )
    canvas_margin: int | None = field(
        default=None,
        metadata={
            "help": "Train each batch on a canvas of its longest code plus this many positions (at most "
            "max_code_length) instead of the full canvas: fewer pad positions are computed, but the model learns "
            "pad only that far past the code, and micro-batches of gradient accumulation weigh positions unequally. "
            "Evaluation losses keep the full canvas. None (default): the full canvas. Pair it with "
            "--train_sampling_strategy group_by_length, which batches code of similar length (the trainer adds "
            "the `length` column). Recorded as the model's `config.canvas_margin`: a model that predicts code lengths "
            "(`predict_length`) samples on the predicted length plus it."
        },
    )
    max_train_minutes: float | None = field(
        default=None, metadata={"help": "Stop training (saving a checkpoint) after this many minutes of this run."}
    )
    lr_decay_minutes: float | None = field(
        default=None,
        metadata={"help": "Scale the learning rate down linearly to 0 over the last minutes of max_train_minutes."},
    )
    generation_eval_samples: int = field(
        default=0, metadata={"help": "At each evaluation, generate code for this many eval rows and log exact match."}
    )
    generation_inference_steps: int = field(default=20, metadata={"help": "Denoising steps of that generation."})
    generation_rounding: str | None = field(
        default=None,
        metadata={"help": "The sampler's rounding for that generation: nearest, decoder or decoder_mean."},
    )
    generation_commit_tokens: bool = field(
        default=False, metadata={"help": "Sample that generation with CodeFusionCommitScheduler (mask-predict)."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the CodeFusion collators need the raw code text."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_time_budget(self.max_train_minutes, self.lr_decay_minutes)
        warn_if_cpu_bf16_is_emulated(self)
        for name in ("unconditional_probability", "cpd_mask_rate", "prompt_dropout_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}.")
        if self.encoder_learning_rate is not None and not self.encoder_learning_rate > 0:
            raise ValueError(f"encoder_learning_rate must be positive, got {self.encoder_learning_rate}.")
        if self.trained_encoder_layers is not None and self.trained_encoder_layers < 1:
            raise ValueError(
                f"trained_encoder_layers must be at least 1, got {self.trained_encoder_layers}: use freeze_encoder "
                "to train none of them."
            )
        if self.freeze_encoder and (self.encoder_learning_rate is not None or self.trained_encoder_layers is not None):
            raise ValueError(
                "freeze_encoder=True trains no encoder parameter: drop encoder_learning_rate and "
                "trained_encoder_layers, or set freeze_encoder=False."
            )
        if self.timestep_bias_strategy not in TIMESTEP_BIAS_STRATEGIES:
            raise ValueError(
                f"timestep_bias_strategy must be one of {TIMESTEP_BIAS_STRATEGIES}, "
                f"got {self.timestep_bias_strategy!r}."
            )
        if self.loss_aware_timesteps and self.timestep_bias_strategy != "none":
            raise ValueError(
                "loss_aware_timesteps chooses the timestep distribution itself: set timestep_bias_strategy='none'."
            )
        if self.min_train_timestep < 0:
            raise ValueError(f"min_train_timestep must be at least 0, got {self.min_train_timestep}.")
        if self.timestep_bias_multiplier <= 0:
            raise ValueError(f"timestep_bias_multiplier must be positive, got {self.timestep_bias_multiplier}.")
        if self.canvas_margin is not None and self.canvas_margin < 0:
            raise ValueError(f"canvas_margin must be None or at least 0, got {self.canvas_margin}.")
        if not 0 < self.timestep_bias_portion <= 1:
            raise ValueError(f"timestep_bias_portion must be in (0, 1], got {self.timestep_bias_portion}.")
        if self.generation_rounding is not None and self.generation_rounding not in ROUNDINGS:
            raise ValueError(
                f"generation_rounding must be None or one of {ROUNDINGS}, got {self.generation_rounding!r}."
            )


def warn_if_cpu_bf16_is_emulated(args: TrainingArguments) -> None:
    """bf16 autocast on a CPU without AVX512-BF16 or AMX is emulated: on this project's 2-core AVX2 machine a bf16
    matrix product ran 47x slower than fp32 (0.88 against 41 GFLOP/s), so a time-limited run would train for a
    fraction of its steps without any error. Shared by the CodeFusion and autoregressive runs."""
    if not args.bf16 or platform.machine().lower() not in ("x86_64", "amd64"):  # the check knows x86 CPUs only
        return
    on_cpu = args.use_cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())
    if on_cpu and not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        logger.warning(
            "bf16=True on a CPU without native bf16 (no AVX512-BF16 or AMX): PyTorch emulates it, and training runs "
            "many times slower than in fp32. Pass --bf16 False."
        )


def check_time_budget(max_train_minutes: float | None, lr_decay_minutes: float | None) -> None:
    """The arguments' own check of `lr_decay_minutes`, shared by the CodeFusion and autoregressive runs."""
    if lr_decay_minutes is None:
        return
    if max_train_minutes is None:
        raise ValueError("lr_decay_minutes needs max_train_minutes: it decays over the end of that time budget.")
    if not 0 < lr_decay_minutes <= max_train_minutes:
        raise ValueError(
            f"lr_decay_minutes={lr_decay_minutes} must be positive and at most max_train_minutes={max_train_minutes}."
        )


class TimeLimitCallback(TrainerCallback):
    """
    Ends training, with a final checkpoint (evaluated when the run evaluates), once `max_train_minutes` of wall time
    have passed in this run. With `lr_decay_minutes`, the learning rate of the schedule is also scaled down linearly
    to 0 over the last `lr_decay_minutes` of the budget: a run that stops on the clock cannot know its step count,
    so a step-based decaying schedule cannot end on time, and a constant rate leaves the gain of annealing on the
    table. The clock is the main process's, broadcast at every step, so every process stops at the same step with
    the same rate.
    """

    def __init__(self, max_train_minutes: float, lr_decay_minutes: float | None = None):
        check_time_budget(max_train_minutes, lr_decay_minutes)
        self.max_seconds = max_train_minutes * 60
        self.decay_seconds = None if lr_decay_minutes is None else lr_decay_minutes * 60
        self.start = None
        self.elapsed = 0.0

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self.start = time.monotonic()
        self.elapsed = 0.0
        if self.decay_seconds is None:
            return
        scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate may wrap it
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise ValueError(
                f"lr_decay_minutes scales a LambdaLR schedule (every lr_scheduler_type of transformers but "
                f"reduce_lr_on_plateau), got {type(scheduler).__name__}: choose another lr_scheduler_type."
            )
        scheduler.lr_lambdas = [
            lambda step, schedule=schedule: schedule(step) * self.lr_factor() for schedule in scheduler.lr_lambdas
        ]

    def lr_factor(self) -> float:
        """1 until the last `lr_decay_minutes` of the budget, then down linearly to 0 at its end."""
        return min(1.0, max(0.0, (self.max_seconds - self.elapsed) / self.decay_seconds))

    def on_optimizer_step(self, args, state, control, **kwargs):
        """Read the clock between the optimizer's step and the schedule's, which sets the next step's rate."""
        (self.elapsed,) = broadcast_object_list([time.monotonic() - self.start])  # as is with one process

    def on_step_end(self, args, state, control, **kwargs):
        if self.elapsed > self.max_seconds:
            logger.warning(
                f"max_train_minutes={args.max_train_minutes} reached at step {state.global_step}: stopping."
            )
            control.should_training_stop = True
            control.should_save = True
            # Evaluated too when the run evaluates: the last checkpoint, the most annealed, then counts for the best
            # model (load_best_model_at_end, early stopping) instead of being passed over for an earlier one.
            control.should_evaluate = args.eval_strategy != "no"


class TimeBudgetProgressCallback(ProgressCallback):
    """The training bar of a run with `max_train_minutes`: it counts the time budget in seconds, with the steps done
    beside it. A run that stops on the clock never reaches `max_steps`, so a bar of steps would show e.g. 0/100000
    and an estimate of days."""

    def __init__(self, max_train_minutes: float):
        super().__init__()
        self.budget_seconds = max_train_minutes * 60

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = tqdm(
                total=round(self.budget_seconds),
                unit="s",
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]",
            )
        self.current_step = 0
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            elapsed = min(round(time.monotonic() - self.start), self.training_bar.total)
            self.training_bar.update(elapsed - self.training_bar.n)
            self.training_bar.set_postfix(step=state.global_step)
        self.current_step = state.global_step


class CodeFusionTrainer(Trainer):
    """
    Phase 2, supervised fine-tuning on (prompt, code) pairs; every part of the model is trained (unless
    `args.freeze_encoder`). Logs each loss term, uses fixed noise and timesteps for evaluation so eval losses are
    comparable, stops on a non-finite loss, and can generate for a few eval rows at each evaluation.

    Args:
        code_tokenizer: The model's code tokenizer (saved with checkpoints as the `processing_class`).
        prompt_tokenizer: The encoder's tokenizer when it differs from the code tokenizer.
        generation_eval_dataset: Rows with `prompt` and `code` used for the exact-match evaluation.
    """

    # compute_loss returns a per-batch mean over the canvas positions: let Trainer divide it by the gradient
    # accumulation steps. The model pads every row to the full canvas and the collators supervise every position,
    # so k full micro-batches of n rows give the gradient of one batch of k * n rows (tested; not so with
    # canvas_margin, whose micro-batches have canvases of different lengths).
    loss_is_scaled_for_ga = False
    # The phase the saved model card names.
    training_phase = "2, fine-tuning on (prompt, code) pairs"
    # The folder `_save_checkpoint` is writing into, while it does.
    _staging_dir: str | None = None

    def __init__(
        self,
        model: CodeFusionModel,
        args: CodeFusionTrainingArguments,
        code_tokenizer: PreTrainedTokenizerBase,
        prompt_tokenizer: PreTrainedTokenizerBase | None = None,
        generation_eval_dataset: Dataset | None = None,
        **kwargs,
    ):
        for name in LOSS_TERMS:
            weight = getattr(args, f"{name}_weight")
            if weight is not None and weight != getattr(model.config, f"{name}_weight"):
                # On the config, so that the saved model records the weights it was trained with.
                logger.warning(
                    f"args.{name}_weight={weight} replaces model.config.{name}_weight="
                    f"{getattr(model.config, f'{name}_weight')} (saved with the model)."
                )
                setattr(model.config, f"{name}_weight", weight)
        # Sampling on a predicted length builds the canvas this training computes: the code plus this margin.
        model.config.canvas_margin = args.canvas_margin
        self.prepare_model(model, args)
        train_dataset = kwargs.get("train_dataset")
        if (
            args.train_sampling_strategy == "group_by_length"
            and isinstance(train_dataset, Dataset)
            and args.length_column_name not in train_dataset.column_names
        ):
            # Trainer groups by the prompt's length otherwise; the canvas is the code.
            lengths = [len(labels) for labels in train_dataset["labels"]]
            kwargs["train_dataset"] = train_dataset.add_column(args.length_column_name, lengths)
        super().__init__(model=model, args=args, processing_class=code_tokenizer, **kwargs)
        self.code_tokenizer = code_tokenizer
        self.prompt_tokenizer = prompt_tokenizer
        self.generation_eval_dataset = generation_eval_dataset
        self._loss_term_sums = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._loss_term_counts = {"train": 0, "eval": 0}
        self._eval_generator = None
        self._timestep_weights = self.timestep_weights(model.config.num_train_timesteps)  # drawn from every step
        model.config.min_train_timestep = args.min_train_timestep  # sampling stays within the timesteps trained
        self.timestep_sampler = LossAwareTimestepSampler(self._timestep_weights) if args.loss_aware_timesteps else None
        if self.caches_encoder_states():
            with args.main_process_first(desc="encoding the prompts once"):
                self.train_dataset = self.with_encoder_states(self.train_dataset)
                if isinstance(self.eval_dataset, dict):
                    self.eval_dataset = {name: self.with_encoder_states(d) for name, d in self.eval_dataset.items()}
                else:
                    self.eval_dataset = self.with_encoder_states(self.eval_dataset)
        if args.max_train_minutes is not None:
            self.add_callback(TimeLimitCallback(args.max_train_minutes, args.lr_decay_minutes))
            if not args.disable_tqdm:
                self.remove_callback(ProgressCallback)
                self.add_callback(TimeBudgetProgressCallback(args.max_train_minutes))

    def prepare_model(self, model: CodeFusionModel, args: CodeFusionTrainingArguments) -> None:
        model.encoder.requires_grad_(not args.freeze_encoder and args.trained_encoder_layers is None)
        if args.trained_encoder_layers is not None:
            layers = encoder_layers(model.encoder)
            if args.trained_encoder_layers > len(layers):
                raise ValueError(
                    f"trained_encoder_layers={args.trained_encoder_layers}, but the prompt encoder has "
                    f"{len(layers)} layers."
                )
            for layer in layers[len(layers) - args.trained_encoder_layers :]:
                layer.requires_grad_(True)
        model.encoder_proj.requires_grad_(True)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """Trainer's optimizer, with the prompt encoder's parameters in groups of their own at
        `args.encoder_learning_rate` when it is set."""
        if self.optimizer is not None or self.args.encoder_learning_rate is None:
            return super().create_optimizer(model)
        optimizer = super().create_optimizer(model)
        encoder_parameters = {id(parameter) for parameter in self.model.encoder.parameters()}
        for group in list(optimizer.param_groups):
            encoder_group = [parameter for parameter in group["params"] if id(parameter) in encoder_parameters]
            if encoder_group:
                group["params"] = [
                    parameter for parameter in group["params"] if id(parameter) not in encoder_parameters
                ]
                optimizer.add_param_group(
                    {
                        "params": encoder_group,
                        "weight_decay": group["weight_decay"],
                        "lr": self.args.encoder_learning_rate,
                    }
                )
        optimizer.param_groups = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

    def caches_encoder_states(self) -> bool:
        """`args.cache_encoder_states` applies to a frozen encoder whose prompts come from the dataset's `input_ids`
        (not phase 1's, whose CPD prompts are masked afresh at every draw) through the CodeFusion collator."""
        collator = self.data_collator
        return (
            self.args.cache_encoder_states
            and self.model.encoder_is_frozen
            and isinstance(collator, CodeFusionDataCollator)
            and not isinstance(collator, CodeFusionPretrainingCollator)
        )

    def with_encoder_states(self, dataset: Dataset | None) -> Dataset | None:
        """`dataset` with the frozen encoder's states of its prompts (`add_encoder_states`), computed on the training
        device and in its precision."""
        if not isinstance(dataset, Dataset) or "input_ids" not in dataset.column_names:
            return dataset
        encoder = self.model.encoder
        home = next(encoder.parameters()).device
        encoder.to(self.args.device)  # FSDP leaves the model on the CPU until it wraps it
        try:
            dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
            return add_encoder_states(dataset, encoder, self.data_collator.prompt_tokenizer, autocast_dtype=dtype)
        finally:
            encoder.to(home)

    def eval_generator(self) -> torch.Generator:
        """The random draws of an evaluation, re-seeded by every `evaluate` call: the same timesteps and noise at every
        evaluation, so eval losses measure the model, not the draw."""
        if self._eval_generator is None:
            self._eval_generator = torch.Generator().manual_seed(self.args.seed)
        return self._eval_generator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            labels = inputs["labels"]
            config = self.accelerator.unwrap_model(model).config
            inputs = dict(inputs)
            inputs["timesteps"] = torch.randint(
                0, config.num_train_timesteps, (labels.shape[0],), generator=self.eval_generator()
            ).to(labels.device)
            inputs["noise"] = torch.randn(
                labels.shape[0], config.max_code_length, config.latent_dim, generator=self.eval_generator()
            ).to(labels.device)
        else:
            if self.timestep_sampler is not None:
                inputs = dict(inputs)
                timesteps, row_weights = self.timestep_sampler.sample(inputs["labels"].shape[0])
                inputs["timesteps"] = timesteps.to(inputs["labels"].device)
                inputs["row_loss_weights"] = row_weights.to(inputs["labels"].device)
            elif self.args.timestep_bias_strategy != "none" or self.args.min_train_timestep > 0:
                inputs = dict(inputs)
                inputs["timesteps"] = torch.multinomial(
                    self._timestep_weights, inputs["labels"].shape[0], replacement=True
                ).to(inputs["labels"].device)
            if self.args.canvas_margin is not None:
                inputs = dict(inputs)
                max_code_length = self.accelerator.unwrap_model(model).config.max_code_length
                inputs["canvas_length"] = min(inputs["labels"].shape[1] + self.args.canvas_margin, max_code_length)
            if self.args.prompt_dropout_probability > 0 and "unconditional" not in inputs:
                inputs = dict(inputs)  # the model replaces these rows' prompt encoding with Gaussian noise
                inputs["unconditional"] = (
                    torch.rand(inputs["labels"].shape[0]) < self.args.prompt_dropout_probability
                ).to(inputs["labels"].device)
        outputs = model(**inputs)
        if model.training and self.timestep_sampler is not None:  # every process learns every process's losses
            self.timestep_sampler.update(
                self.accelerator.gather(inputs["timesteps"]).cpu(), self.accelerator.gather(outputs.row_losses).cpu()
            )
        mode = "train" if model.training else "eval"
        for name in (*LOSS_TERMS, "length_loss"):
            if getattr(outputs, name) is not None:  # a length loss only with config.predict_length
                self._loss_term_sums[mode][name] += getattr(outputs, name).item()
        self._loss_term_counts[mode] += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def timestep_weights(self, num_train_timesteps: int) -> torch.Tensor:
        """Probability of drawing each training timestep under `args.timestep_bias_*` and `args.min_train_timestep`."""
        args = self.args
        if args.min_train_timestep >= num_train_timesteps:
            raise ValueError(
                f"min_train_timestep={args.min_train_timestep} leaves no timestep to train on: the model has "
                f"num_train_timesteps={num_train_timesteps}."
            )
        weights = torch.ones(num_train_timesteps)
        num_biased = max(1, round(args.timestep_bias_portion * num_train_timesteps))
        if args.timestep_bias_strategy == "later":
            weights[num_train_timesteps - num_biased :] *= args.timestep_bias_multiplier
        elif args.timestep_bias_strategy == "earlier":
            weights[:num_biased] *= args.timestep_bias_multiplier
        weights[: args.min_train_timestep] = 0
        return weights / weights.sum()

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss):
            raise RuntimeError(
                f"The training loss became {loss.item()} at step {self.state.global_step}; stopping before anything "
                "is saved. Lower the learning rate or the loss weights (or clip gradients with max_grad_norm) and "
                "resume from the last checkpoint."
            )
        return loss

    def _pop_loss_terms(self, mode: str) -> dict[str, float]:
        count = self._loss_term_counts[mode]
        terms = {name: total / count for name, total in self._loss_term_sums[mode].items()} if count else {}
        self._loss_term_sums[mode].clear()
        self._loss_term_counts[mode] = 0
        return terms

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self._pop_loss_terms("train"))
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        self._eval_generator = None
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        extra = {f"{metric_key_prefix}_{name}": value for name, value in self._pop_loss_terms("eval").items()}
        if self.args.generation_eval_samples and self.generation_eval_dataset is not None:
            extra |= {f"{metric_key_prefix}_{k}": v for k, v in self.generation_metrics().items()}
        if extra:
            self.log(extra)
            metrics.update(extra)
        return metrics

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Trainer's checkpoint, written into a staging folder (`checkpoint-N.tmp`) and renamed to `checkpoint-N`
        once complete: Trainer writes in place, so a run killed or out of disk space during a save would leave a
        `checkpoint-N` that looks like the last one. A save that fails removes its staging folder, and says so when
        the disk is full. Rotation (`save_total_limit`), the best checkpoint and Hub pushes see finished folders."""
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        checkpoint, staging_dir = os.path.join(run_dir, name), os.path.join(run_dir, name + STAGING_SUFFIX)
        staged = os.path.join(staging_dir, name)
        if self.args.should_save:
            remove_staging_folders(run_dir)  # left by killed saves: only one save runs at a time
        self.accelerator.wait_for_everyone()  # before any process writes its random states into the staging folder
        self._staging_dir = staging_dir
        try:
            super()._save_checkpoint(model, trial)  # into `staged`, through `_get_output_dir`
            if self.state.best_model_checkpoint == staged:
                self.state.best_model_checkpoint = checkpoint
                if self.args.should_save:  # Trainer saved the staging path as the best one
                    self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
            if self.args.should_save:
                write_schedule_record(staged, self.args)
        except Exception as error:
            disk_full = is_disk_full(error, run_dir)  # before the partial files are removed
            if self.args.should_save:
                shutil.rmtree(staging_dir, ignore_errors=True)
            if disk_full:
                raise OSError(
                    errno.ENOSPC,
                    f"No space left on device to save {name} in {run_dir} ({error}): free some space there or "
                    "choose another output_dir. The partial checkpoint was removed and any earlier one there is "
                    "intact: resuming continues from the last of them.",
                ) from error
            raise
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()  # every process's files are in the staging folder
        if not self.args.should_save:
            return
        if os.path.isdir(checkpoint):  # a damaged one left by an earlier run, or Trainer's JIT checkpoint marker
            shutil.rmtree(checkpoint)
        os.replace(staged, checkpoint)
        os.rmdir(staging_dir)
        if self.args.push_to_hub:
            self._push_from_checkpoint(checkpoint)
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

    def _get_output_dir(self, trial: Any) -> str:
        """Trainer's run folder, or while `_save_checkpoint` writes a checkpoint, its staging folder: Trainer saves
        into `<this folder>/checkpoint-N`."""
        return self._staging_dir or super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer's push of a checkpoint, skipped while it is staged: `_save_checkpoint` pushes the renamed one (an
        upload runs in the background, and would lose its files to the rename)."""
        if self._staging_dir is None:
            super()._push_from_checkpoint(checkpoint_folder)

    def make_pipeline(
        self, model: CodeFusionModel, scheduler_class: type[CodeFusionScheduler] = CodeFusionScheduler
    ) -> CodeFusionPipeline:
        """A pipeline around `model` (the unwrapped model being trained, or its gathered copy) that samples with
        `scheduler_class` on the model's training schedule; the x0 clip is set to 3x the current code embedding
        spread."""
        scheduler = scheduler_class.from_config(
            model.noise_scheduler.config, clip_sample_range=3 * model.code_embedding_matrix().std().item()
        )
        pipe = CodeFusionPipeline(
            model=model, scheduler=scheduler, tokenizer=self.code_tokenizer, prompt_tokenizer=self.prompt_tokenizer
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def generation_metrics(self, batch_size: int = 32) -> dict[str, float]:
        """Top-1 generation on the first `generation_eval_samples` rows: exact (and, for Bash, template) match,
        the share of non-empty outputs and of distinct outputs (low when the noise, not the prompt, decides)."""
        rows = self.generation_eval_dataset.select(
            range(min(self.args.generation_eval_samples, len(self.generation_eval_dataset)))
        )
        model = self.accelerator.unwrap_model(self.model)
        # The pipeline calls the model's stages, not its forward, and projects the prompt with every layer's weights
        # once per call: gather all sharded parameters for the generation (every process runs this same
        # generation, so the collectives match).
        sharded = [module for module in model.modules() if isinstance(module, FSDPModule)]
        for module in sharded:
            module.unshard()
        try:
            scheduler_class = CodeFusionCommitScheduler if self.args.generation_commit_tokens else CodeFusionScheduler
            pipe = self.make_pipeline(model, scheduler_class)
            generator = torch.Generator(device=self.args.device).manual_seed(self.args.seed)
            predictions = []
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                output = pipe(
                    chunk["prompt"],
                    num_inference_steps=self.args.generation_inference_steps,
                    rounding=self.args.generation_rounding,
                    generator=generator,
                )
                predictions += [candidates[0] for candidates in output.code]
        finally:
            for module in sharded:
                module.reshard()
        references = rows["code"]
        metrics = {"exact_match": sum(map(exact_match, predictions, references)) / len(rows)}
        if self.args.language == "bash":
            metrics["template_match"] = sum(map(template_match, predictions, references)) / len(rows)
        return metrics | {
            "non_empty_rate": sum(bool(p.strip()) for p in predictions) / len(rows),
            "distinct_rate": len(set(predictions)) / len(rows),
        }

    def save_pipeline(
        self, output_dir: str | None = None, training_data: str | None = None, **model_card: Any
    ) -> None:
        """Save a ready-to-use `CodeFusionPipeline` (model, scheduler, tokenizers) to `output_dir`, with a model card
        that records what the trainer knows: the phase, data size and budget, the language and, as `base_model`, the
        encoder's Hub id when it came from the Hub. `training_data` (a file or dataset id) joins the training summary;
        `model_card` adds or overrides `create_model_card` fields (e.g. `base_model`, `datasets`). Call it on every
        process: under FSDP the parameters are gathered from all of them."""
        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, FSDPModule):
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # the full weights on rank 0 only
            state_dict = get_model_state_dict(model, options=options)
            if self.is_world_process_zero():
                model = CodeFusionModel(model.config)
                model.load_state_dict(state_dict)
        if not self.is_world_process_zero():
            return
        args, state = self.args, self.state
        schedule = args.lr_scheduler_type
        summary = {
            "phase": self.training_phase,
            "training data": training_data or "not recorded",
            "training rows": len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else "unknown",
            "steps": state.global_step,
            "epochs": round(state.epoch or 0, 2),
            "batch size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            "learning rate": f"{args.learning_rate:g}, {getattr(schedule, 'value', schedule)} schedule",
            "seed": args.seed,
        }
        finished = [entry for entry in state.log_history if "train_runtime" in entry]
        if finished:  # the last `train()` call only, when training was resumed
            summary["training time"] = f"{finished[-1]['train_runtime'] / 60:.1f} minutes on {args.device.type}"
            if "train_loss" in finished[-1]:
                summary["mean training loss"] = f"{finished[-1]['train_loss']:.4f}"
        encoder = model.config.encoder_config
        card = {
            "training_summary": summary,
            "language": args.language,
            "base_model": hub_model_id(getattr(encoder, "_name_or_path", None)),
        }
        self.make_pipeline(model).save_pretrained(output_dir or args.output_dir, model_card=card | model_card)


class CodeFusionPretrainer(CodeFusionTrainer):
    """
    Phase 1, pre-training on code snippets alone. The encoder is frozen (only the denoiser, decoder and code
    embedding learn). Each row is either unconditional generation, whose prompt encoding is replaced by fresh
    Gaussian noise, or CPD, whose encoder input is the snippet with identifiers and keywords masked; use
    [`CodeFusionPretrainingCollator`] to make such batches.
    """

    training_phase = "1, code-only pre-training (encoder frozen)"

    def prepare_model(self, model: CodeFusionModel, args: CodeFusionTrainingArguments) -> None:
        model.encoder.requires_grad_(False)
        model.encoder_proj.requires_grad_(False)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        """Evaluation batches from a fresh copy of the pre-training collator (same seed): every evaluation draws the
        same tasks and masks, and the training batches' draws go on undisturbed."""
        collator = self.data_collator
        if not isinstance(collator, CodeFusionPretrainingCollator):
            return super().get_eval_dataloader(eval_dataset)
        self.data_collator = replace(collator)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)  # its `unconditional` rows get Gaussian noise as their prompt encoding in the model
        if not model.training:
            input_ids = inputs["input_ids"]
            shape = (*input_ids.shape, self.accelerator.unwrap_model(model).config.hidden_size)
            inputs["prompt_noise"] = torch.randn(shape, generator=self.eval_generator()).to(input_ids.device)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class LossAwareTimestepSampler:
    """Improved DDPM's loss-second-moment timestep sampler (Nichol & Dhariwal, 2021), which GENIE and DiffuSeq train
    with: timestep t is drawn with probability proportional to `base[t]` times the root mean square of the last
    `history` row losses seen in its bucket (`num_buckets` runs of consecutive timesteps, so that the estimate is
    ready after about `num_buckets * history` rows instead of T times that), mixed with `uniform_share` of `base`.
    Each row's importance weight `base[t] / p[t]` keeps the loss an unbiased estimate of the loss under `base`.
    Until every bucket that `base` can draw from has its history, timesteps are drawn from `base` with weight 1.
    The history is not checkpointed: a resumed run warms up again."""

    def __init__(self, base: torch.Tensor, num_buckets: int = 100, history: int = 10, uniform_share: float = 0.001):
        self.base = base / base.sum()
        self.num_buckets = min(num_buckets, len(base))
        self.bucket_of = torch.arange(len(base)) * self.num_buckets // len(base)
        self.losses = torch.zeros(self.num_buckets, history)
        self.counts = torch.zeros(self.num_buckets, dtype=torch.long)
        self.used = torch.zeros(self.num_buckets, dtype=torch.bool).index_fill(0, self.bucket_of[self.base > 0], True)
        self.uniform_share = uniform_share

    @property
    def warm(self) -> bool:
        return bool((self.counts[self.used] >= self.losses.shape[1]).all())

    def probabilities(self) -> torch.Tensor:
        """The distribution timesteps are drawn from now."""
        if not self.warm:
            return self.base
        root_mean_square = self.losses.pow(2).mean(dim=1).sqrt()[self.bucket_of]
        weighted = self.base * root_mean_square
        return (1 - self.uniform_share) * weighted / weighted.sum() + self.uniform_share * self.base

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` timesteps and each one's importance weight."""
        probabilities = self.probabilities()
        timesteps = torch.multinomial(probabilities, batch_size, replacement=True)
        return timesteps, self.base[timesteps] / probabilities[timesteps]

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the row losses of rows drawn at `timesteps` (a row's largest timestep where they vary along it)."""
        if timesteps.ndim == 2:
            timesteps = timesteps.max(dim=1).values
        for bucket, loss in zip(self.bucket_of[timesteps].tolist(), losses.float().tolist()):
            history = self.losses[bucket]
            history[:-1] = history[1:].clone()  # the oldest out
            history[-1] = loss
            self.counts[bucket] += 1


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers of a transformers encoder (BERT's `encoder.layer`, T5's `encoder.block`, ...):
    the outermost `ModuleList` with as many modules as its config has layers."""
    num_layers = getattr(encoder.config, "num_hidden_layers", None)
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise ValueError(
        f"{type(encoder).__name__} has no list of {num_layers} layers (config.num_hidden_layers): "
        "trained_encoder_layers cannot apply to it."
    )


# `CodeFusionTrainer` writes `checkpoint-N` as `checkpoint-N.tmp/checkpoint-N` and renames it once complete. The
# suffix keeps the staging folder out of Trainer's and this package's Hub uploads, which skip `checkpoint-*`.
STAGING_SUFFIX = ".tmp"
CHECKPOINT_FOLDER = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
STAGING_FOLDER = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+){re.escape(STAGING_SUFFIX)}")
RNG_STATE_FILE = re.compile(r"rng_state(_\d+)?\.pth")  # `rng_state_<process>.pth` under several processes
# Free space under which a failed save counts as a full disk: torch.save and safetensors raise their own errors
# (torch's reads "unexpected pos 704 vs 598"), not an OSError, once their writes have filled the disk.
FULL_DISK_BYTES = 1 << 20


def numbered_folders(folder: str, pattern: re.Pattern) -> dict[int, str]:
    """The folders in `folder` whose names match `pattern`, by the step number it captures."""
    matches = {name: pattern.fullmatch(name) for name in os.listdir(folder)}
    return {
        int(match.group(1)): os.path.join(folder, name)
        for name, match in matches.items()
        if match and os.path.isdir(os.path.join(folder, name))
    }


def remove_staging_folders(folder: str) -> None:
    """Remove the staging folders of saves into `folder` that never finished."""
    if os.path.isdir(folder):
        for staging_dir in numbered_folders(folder, STAGING_FOLDER).values():
            shutil.rmtree(staging_dir, ignore_errors=True)


def is_disk_full(error: Exception, folder: str) -> bool:
    """Whether `error`, raised while saving into `folder`, comes from a full disk (or quota): an OSError says so, the
    writers of torch and safetensors do not, so a disk left with under `FULL_DISK_BYTES` free counts too."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return os.path.isdir(folder) and shutil.disk_usage(folder).free < FULL_DISK_BYTES


def check_loadable(path: str) -> None:
    """Raise an `OSError` naming `path` when a checkpoint file does not load: torch files (optimizer, schedule, random
    states) as Trainer loads them, their tensors memory-mapped rather than read; the others by `check_readable`."""
    if not path.endswith((".pt", ".pth", ".bin")):
        check_readable(path)
        return
    try:
        with safe_globals():  # the numpy types of the random states
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # any load failure means a corrupted file
        raise OSError(f"{path} is corrupted: {error}") from None


def checkpoint_problem(checkpoint: str, args: TrainingArguments) -> str | None:
    """Why `checkpoint` cannot be resumed from (a file missing or unloadable), or None. Besides the model and
    Trainer state, the optimizer, schedule and random states are required unless `args.save_only_model` (Trainer
    saves none then): Trainer would resume without them in silence, with a fresh optimizer. Every file Trainer would
    load is checked when present."""
    names = set(os.listdir(checkpoint))
    optimizer = OPTIMIZER_NAME_BIN if OPTIMIZER_NAME_BIN in names else OPTIMIZER_NAME  # .bin: saved under FSDP
    rng_states = sorted(name for name in names if RNG_STATE_FILE.fullmatch(name)) or ["rng_state.pth"]
    training_state = [optimizer, SCHEDULER_NAME, *rng_states]
    required = [TRAINER_STATE_NAME, "config.json", "model.safetensors"]
    if not args.save_only_model:
        required += training_state
    missing = [name for name in required if name not in names]
    if missing:
        problem = f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
        if set(training_state) <= set(missing):
            problem += " (saved with save_only_model=True? Pass --save_only_model True to resume with a new optimizer)"
        return problem
    for name in sorted(names & {*required, *training_state, SCALER_NAME, SCHEDULE_FILE}):
        try:
            check_loadable(os.path.join(checkpoint, name))
        except OSError as error:
            return str(error)
    return None


def find_resume_checkpoint(args: TrainingArguments) -> str | None:
    """The checkpoint to resume from: `args.resume_from_checkpoint` if given, which must be complete, else the last
    complete one in `args.output_dir`, with a warning naming the later ones skipped and why (a save that never
    finished, a file missing or unloadable). Never a silent fresh start or fresh optimizer: a damaged checkpoint
    given explicitly, or an `output_dir` none of whose checkpoints is complete, is an error."""
    if args.resume_from_checkpoint:
        checkpoint = args.resume_from_checkpoint
        if not os.path.isdir(checkpoint):
            raise ValueError(f"resume_from_checkpoint={checkpoint} does not exist.")
        problem = checkpoint_problem(checkpoint, args)
        if problem is not None:
            raise ValueError(
                f"Checkpoint {checkpoint} cannot be resumed from: {problem}. Pass another --resume_from_checkpoint, "
                "or none to resume from the last complete checkpoint in output_dir."
            )
    else:
        checkpoint = last_complete_checkpoint(args)
        if checkpoint is None:
            return None
    check_resumed_schedule(checkpoint, args)
    return checkpoint


def last_complete_checkpoint(args: TrainingArguments) -> str | None:
    """The last complete checkpoint in `args.output_dir` (see `find_resume_checkpoint`), or None when it has none."""
    if not os.path.isdir(args.output_dir):
        return None
    checkpoints = numbered_folders(args.output_dir, CHECKPOINT_FOLDER)
    skipped = []  # (step, folder, why)
    last_step = None
    for step in sorted(checkpoints, reverse=True):
        problem = checkpoint_problem(checkpoints[step], args)
        if problem is None:
            last_step = step
            break
        skipped.append((step, checkpoints[step], problem))
    skipped += [
        (step, staging_dir, "a save that never finished; delete it")
        for step, staging_dir in numbered_folders(args.output_dir, STAGING_FOLDER).items()
        if last_step is None or step > last_step
    ]
    reasons = "; ".join(f"{folder} ({why})" for _, folder, why in sorted(skipped, reverse=True))
    if last_step is None and checkpoints:
        raise ValueError(
            f"No checkpoint in {args.output_dir} can be resumed from: {reasons}. Repair them, pass "
            "--resume_from_checkpoint, or choose another output_dir to start afresh."
        )
    if last_step is None:
        if skipped:
            logger.warning(f"{args.output_dir} has no checkpoint to resume from, only {reasons}: starting afresh.")
        return None
    if skipped:
        logger.warning(f"Resuming from {checkpoints[last_step]}, the last complete checkpoint, skipping {reasons}.")
    return checkpoints[last_step]


# The arguments that shape the learning rate, recorded in every checkpoint (`schedule.json`) by `CodeFusionTrainer`
# and, for a plain Trainer, `ScheduleRecordCallback`, so that a resumed run can say what it does with changed ones.
SCHEDULE_ARGUMENTS = (
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "warmup_ratio",
    "max_steps",
    "num_train_epochs",
    "max_train_minutes",
    "lr_decay_minutes",
)
SCHEDULE_FILE = "schedule.json"


def schedule_arguments(args: TrainingArguments) -> dict[str, Any]:
    """The learning-rate arguments of `args`, as JSON values."""
    values = {name: getattr(args, name, None) for name in SCHEDULE_ARGUMENTS}
    return json.loads(json.dumps(values, default=lambda value: getattr(value, "value", str(value))))


def write_schedule_record(checkpoint: str, args: TrainingArguments) -> None:
    """Write the learning-rate arguments of `args` into `checkpoint`, so that resuming with other ones can say so."""
    with open(os.path.join(checkpoint, SCHEDULE_FILE), "w") as f:
        json.dump(schedule_arguments(args), f, indent=2)


class ScheduleRecordCallback(TrainerCallback):
    """Writes the learning-rate arguments into each checkpoint of a plain `Trainer` (the autoregressive runs) once
    saved; `CodeFusionTrainer` writes them itself, into the checkpoint before it is complete."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(checkpoint):
                write_schedule_record(checkpoint, args)


def check_resumed_schedule(checkpoint: str, args: TrainingArguments) -> None:
    """Refuse, or say what resuming does with, learning-rate arguments that differ from the checkpoint's: Trainer
    restores the checkpoint's optimizer and schedule state, so another `learning_rate` would be silently ignored (an
    error), while the shape of the schedule (type, warmup, length, time budget) is rebuilt from the arguments given
    now (a warning)."""
    path = os.path.join(checkpoint, "scheduler.pt")
    base_rates = (torch.load(path, weights_only=True).get("base_lrs") or []) if os.path.isfile(path) else []
    if any(rate != args.learning_rate for rate in base_rates):
        raise ValueError(
            f"Resuming from {checkpoint}, whose learning-rate schedule starts from {base_rates[0]:g}, with "
            f"learning_rate={args.learning_rate:g}: Trainer restores a checkpoint's optimizer and schedule, so the "
            f"new rate would be ignored. Resume with --learning_rate {base_rates[0]:g}, or, to train at the new rate, "
            "start a new run in another output_dir from the pipeline this run saves when it ends "
            "(--model_name_or_path)."
        )
    record = os.path.join(checkpoint, SCHEDULE_FILE)
    if not os.path.isfile(record):
        return
    with open(record) as f:
        recorded = json.load(f)
    now = schedule_arguments(args)
    changed = [
        f"{name}: {recorded[name]!r} -> {now[name]!r}"
        for name in SCHEDULE_ARGUMENTS
        if name != "learning_rate" and name in recorded and recorded[name] != now[name]
    ]
    if changed:
        logger.warning(
            f"Resuming from {checkpoint} with other schedule arguments ({'; '.join(changed)}): the first step "
            "keeps the rate the checkpoint's schedule had set, and from the next one the schedule follows the new "
            "values (Trainer builds it from the arguments given now) at the checkpoint's base learning rate."
        )


__all__ = [
    "CodeFusionPretrainer",
    "CodeFusionTrainer",
    "CodeFusionTrainingArguments",
    "ScheduleRecordCallback",
    "TimeLimitCallback",
    "find_resume_checkpoint",
]
