"""Training CodeFusion with the transformers `Trainer`: phase 1 (code-only pre-training) and phase 2 (fine-tuning).
The run-keeping any Trainer can use lives beside it: callbacks and argument checks in
`training_callbacks_codefusion`, checkpoints and resuming in `training_checkpoints_codefusion`, the timestep
distributions in `training_timesteps_codefusion`."""

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.utils import logging

from .configuration_codefusion import CodeFusionConfig
from .constants import LANGUAGES, ROUNDINGS
from .data_codefusion import CodeFusionDataCollator, CodeFusionPretrainingCollator, add_encoder_states, add_neighbors
from .evaluation_codefusion import score_candidates
from .modelcard_codefusion import hub_model_id
from .modeling_codefusion import CodeFusionModel
from .pipeline_codefusion import CodeFusionPipeline
from .retrieval_codefusion import RETRIEVAL_MODES, CodeFusionRetriever
from .sampling_options_codefusion import SamplingOptions
from .scheduling_codefusion import CodeFusionScheduler
from .training_callbacks_codefusion import (
    TimeBudgetProgressCallback,
    TimeLimitCallback,
    check_time_budget,
    warn_if_cpu_bf16_is_emulated,
)
from .training_checkpoints_codefusion import StagedCheckpointsMixin
from .training_timesteps_codefusion import TIMESTEP_BIAS_STRATEGIES, LossAwareTimestepSampler, timestep_weights

logger = logging.get_logger(__name__)

LOSS_TERMS = ("noise_loss", "embedding_loss", "decoder_loss")
# The top-1 metrics of `score_candidates` that each evaluation logs (with its prefix, e.g. eval_exact_match), by the
# names training logs them under.
GENERATION_METRICS = {
    "exact_match@1": "exact_match",
    "template_match@1": "template_match",
    "non_empty_rate": "non_empty_rate",
    "distinct_top1_rate": "distinct_rate",
}


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
    retrieval_mode: str = field(
        default="bm25",
        metadata={
            "help": "For a retrieval-augmented model (config.num_neighbors) without a given retriever: the retriever "
            "built over the training pairs, bm25 (their prompts' words) or dense (the frozen prompt encoder's pooled "
            "states; with freeze_encoder, so that the encoder that indexed the corpus is the one saved).",
            "choices": list(RETRIEVAL_MODES),
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
        if self.retrieval_mode not in RETRIEVAL_MODES:
            raise ValueError(f"retrieval_mode must be one of {RETRIEVAL_MODES}, got {self.retrieval_mode!r}.")
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


class CodeFusionTrainer(StagedCheckpointsMixin, Trainer):
    """
    Phase 2, supervised fine-tuning on (prompt, code) pairs; every part of the model is trained (unless
    `args.freeze_encoder`). Logs each loss term, uses fixed noise and timesteps for evaluation so eval losses are
    comparable, stops on a non-finite loss, and can generate for a few eval rows at each evaluation.

    Args:
        code_tokenizer: The model's code tokenizer (saved with checkpoints as the `processing_class`).
        prompt_tokenizer: The encoder's tokenizer when it differs from the code tokenizer.
        generation_eval_dataset: Rows with `prompt` and `code` used for the exact-match evaluation.
        retriever: For a retrieval-augmented model (`config.num_neighbors`): the corpus its rows' neighbours come
            from, saved with the pipeline. Default: a BM25 retriever over the training pairs, each training row
            retrieving leave-one-out (never a pair with its own prompt).
    """

    # compute_loss returns a per-batch mean over the canvas positions: let Trainer divide it by the gradient
    # accumulation steps. The model pads every row to the full canvas and the collators supervise every position,
    # so k full micro-batches of n rows give the gradient of one batch of k * n rows (tested; not so with
    # canvas_margin, whose micro-batches have canvases of different lengths).
    loss_is_scaled_for_ga = False
    # The phase the saved model card names.
    training_phase = "2, fine-tuning on (prompt, code) pairs"

    def __init__(
        self,
        model: CodeFusionModel,
        args: CodeFusionTrainingArguments,
        code_tokenizer: PreTrainedTokenizerBase,
        prompt_tokenizer: PreTrainedTokenizerBase | None = None,
        generation_eval_dataset: Dataset | None = None,
        retriever: CodeFusionRetriever | None = None,
        **kwargs,
    ):
        self.record_training_settings(model, args)
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
        self.retriever = retriever
        if model.config.num_neighbors and isinstance(self.train_dataset, Dataset):
            with args.main_process_first(desc="retrieving each row's neighbours"):
                self.add_retrieval(model.config)
        self._loss_term_sums = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._loss_term_counts = {"train": 0, "eval": 0}
        self._eval_generator = None
        self._timestep_weights = self.timestep_weights(model.config.num_train_timesteps)  # drawn from every step
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

    def record_training_settings(self, model: CodeFusionModel, args: CodeFusionTrainingArguments) -> None:
        """Write into `model.config` the training arguments that sampling must follow, the only place the trainer
        changes the config: the saved model then records how it was trained. The loss weights that `args` override
        (with a warning); `canvas_margin`, since sampling on a predicted length builds the canvas this training
        computes, the code plus that margin; `min_train_timestep`, since sampling stays within the timesteps
        trained."""
        config = model.config
        for name in LOSS_TERMS:
            weight = getattr(args, f"{name}_weight")
            if weight is not None and weight != getattr(config, f"{name}_weight"):
                logger.warning(
                    f"args.{name}_weight={weight} replaces model.config.{name}_weight="
                    f"{getattr(config, f'{name}_weight')} (saved with the model)."
                )
                setattr(config, f"{name}_weight", weight)
        config.canvas_margin = args.canvas_margin
        config.min_train_timestep = args.min_train_timestep

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

    def add_retrieval(self, config: CodeFusionConfig) -> None:
        """Give every training and evaluation row the code of its `config.num_neighbors` nearest pairs in the
        retriever's corpus (`add_neighbors`): leave-one-out for the training rows, which the default retriever, an
        index of the training pairs (`args.retrieval_mode`: BM25, or the prompt encoder's states), holds."""
        mode = self.retriever.mode if self.retriever is not None else self.args.retrieval_mode
        pipeline = self.make_pipeline(self.model) if mode == "dense" else None  # its prompt encoder encodes
        if mode == "dense" and not self.args.freeze_encoder:
            raise ValueError(
                "A dense retriever indexes the corpus with the prompt encoder once, before training: set "
                "freeze_encoder=True so that it stays the encoder saved, or use retrieval_mode='bm25'."
            )
        if self.retriever is None:
            self.retriever = CodeFusionRetriever.from_dataset(self.train_dataset, mode=mode, pipeline=pipeline)
        tokenizer, length = self.code_tokenizer, config.max_code_length

        def with_neighbors(dataset: Dataset | None, leave_one_out: bool) -> Dataset | None:
            if not isinstance(dataset, Dataset):
                return dataset
            return add_neighbors(
                dataset, self.retriever, config.num_neighbors, tokenizer, length, leave_one_out, pipeline=pipeline
            )

        self.train_dataset = with_neighbors(self.train_dataset, leave_one_out=True)
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {name: with_neighbors(d, False) for name, d in self.eval_dataset.items()}
        else:
            self.eval_dataset = with_neighbors(self.eval_dataset, leave_one_out=False)

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
        return timestep_weights(
            num_train_timesteps,
            args.timestep_bias_strategy,
            args.timestep_bias_multiplier,
            args.timestep_bias_portion,
            args.min_train_timestep,
        )

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

    def make_pipeline(self, model: CodeFusionModel) -> CodeFusionPipeline:
        """A pipeline around `model` (the unwrapped model being trained, or its gathered copy) that samples on the
        model's training schedule; the x0 clip is set to 3x the current code embedding spread."""
        scheduler = CodeFusionScheduler.from_config(
            model.noise_scheduler.config, clip_sample_range=3 * model.code_embedding_matrix().std().item()
        )
        pipe = CodeFusionPipeline(
            model=model,
            scheduler=scheduler,
            tokenizer=self.code_tokenizer,
            prompt_tokenizer=self.prompt_tokenizer,
            retriever=self.retriever,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def generation_metrics(self, batch_size: int = 32) -> dict[str, float]:
        """Top-1 generation on the first `generation_eval_samples` rows, scored as `codefusion evaluate` scores it
        (`score_candidates`): exact (and, for Bash, template) match, the share of non-empty outputs and of distinct
        outputs (low when the noise, not the prompt, decides), under the names of `GENERATION_METRICS`."""
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
            sampling = SamplingOptions(
                num_inference_steps=self.args.generation_inference_steps,
                rounding=self.args.generation_rounding,
                commit_tokens=self.args.generation_commit_tokens,
            )
            pipe = sampling.prepare_pipeline(self.make_pipeline(model))
            generator = torch.Generator(device=self.args.device).manual_seed(self.args.seed)
            predictions = []
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                output = pipe(chunk["prompt"], generator=generator, **sampling.call_kwargs())
                predictions += [candidates[0] for candidates in output.code]
        finally:
            for module in sharded:
                module.reshard()
        language = self.args.language if self.args.language in LANGUAGES else "other"  # CPD masks any language
        scores = score_candidates([[code] for code in predictions], rows["code"], language)
        return {name: scores[key] for key, name in GENERATION_METRICS.items() if key in scores}

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


__all__ = ["CodeFusionPretrainer", "CodeFusionTrainer", "CodeFusionTrainingArguments"]
