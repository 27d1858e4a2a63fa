"""Text-to-code generation with CodeFusion: prompt in, ranked code candidates out."""

import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedTokenizerBase

from .constants import DECODER_ROUNDINGS, RANKINGS, ROUNDINGS
from .hub_codefusion import CodeFusionPipelineHubMixin
from .modeling_codefusion import CodeFusionModel, CodeFusionPromptCache
from .scheduling_codefusion import CodeFusionScheduler
from .scheduling_codefusion_commit import most_likely_tokens

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("text", "pt", "latent")
CODE_LENGTHS = ("predicted", "full")
# The predicted canvas spreads a prompt's candidates over this many likeliest lengths by default: on NL2Bash
# validation it raised template match at top-5 from 7.2% to 8.9% (research/NOTES.md, the full-budget entry).
DEFAULT_LENGTH_BEAM = 3
# Candidates on canvases of different lengths share a batch while padding them to its longest canvas computes at most
# this many times their own positions, or at most this many positions more, about what one more loop of steps costs
# on a CPU at one prompt (`CodeFusionPipeline.canvas_groups`).
MAX_CANVAS_PADDING = 1.25
CANVAS_PADDING_ALLOWANCE = 256


@dataclass
class CodeFusionPipelineOutput(BaseOutput):
    """
    Args:
        code: For each prompt, its `num_return_sequences` candidates, best first: strings for `output_type="text"`;
            a `(num_prompts, k, canvas_length)` tensor of token ids for `"pt"`; the final latents for `"latent"`.
        scores: For each prompt, the ranking score of each candidate (see `ranking`; by default the decoder's mean
            token log-probability of the kept tokens and the pad/eos that ends them). It never looks at a reference.
        trajectory: When asked, one entry per recorded step: `{"step", "timestep", "code"}`, where `code` is the
            decoded x0 estimate of every candidate at that step, in the same (ranked) order as `code`.
    """

    code: list[list[str]] | torch.Tensor
    scores: list[list[float]]
    trajectory: list[dict] | None = None


@dataclass
class DenoisingRows:
    """What the candidates still being denoised read at every step. `stop_when_stable` and `canvas_margin` shrink
    it as candidates finish and as the tail of the canvas settles, so that settled work is not computed again."""

    indices: torch.LongTensor  # each row's candidate in the call
    canvas_lengths: torch.LongTensor  # each row's own canvas; the positions past it are masked
    latents: torch.Tensor
    encoder_hidden_states: torch.Tensor
    attention_mask: torch.Tensor
    prompt_cache: CodeFusionPromptCache
    generator: torch.Generator | list[torch.Generator] | None
    self_condition: torch.Tensor | None = None
    unconditional_states: torch.Tensor | None = None
    unconditional_cache: CodeFusionPromptCache | None = None

    def select(self, keep: torch.BoolTensor, canvas_length: int) -> "DenoisingRows":
        """The rows `keep`, with the canvas cut to its first `canvas_length` positions."""
        generator = self.generator
        if isinstance(generator, list):  # one generator per candidate
            generator = [g for g, kept in zip(generator, keep.tolist()) if kept]
        return DenoisingRows(
            indices=self.indices[keep],
            canvas_lengths=self.canvas_lengths[keep],
            latents=self.latents[keep, :canvas_length],
            encoder_hidden_states=self.encoder_hidden_states[keep],
            attention_mask=self.attention_mask[keep],
            prompt_cache=self.prompt_cache[keep],
            generator=generator,
            self_condition=None if self.self_condition is None else self.self_condition[keep, :canvas_length],
            unconditional_states=None if self.unconditional_states is None else self.unconditional_states[keep],
            unconditional_cache=None if self.unconditional_cache is None else self.unconditional_cache[keep],
        )

    # Computed once for these rows: their canvas changes only through `select`, which makes new rows.
    @cached_property
    def past_canvas(self) -> torch.BoolTensor:
        """`(rows, canvas_length)`: True at the positions past each row's own canvas."""
        positions = torch.arange(self.latents.shape[1], device=self.latents.device)
        return positions[None, :] >= self.canvas_lengths[:, None]

    @cached_property
    def code_attention_mask(self) -> torch.Tensor | None:
        """The model's `code_attention_mask` for these rows: None when every row fills the canvas."""
        return (~self.past_canvas).long() if self.past_canvas.any() else None


def check_same_noise_schedule(scheduler: CodeFusionScheduler, trained: CodeFusionScheduler) -> None:
    """Refuse a sampling schedule other than the training one even when the named fields agree: another
    `beta_start`, `beta_end` or `trained_betas` (an edited scheduler_config.json) samples on untrained noise levels."""
    alphas_cumprod = scheduler.alphas_cumprod.to(trained.alphas_cumprod.device)
    if torch.allclose(alphas_cumprod, trained.alphas_cumprod, rtol=1e-5, atol=1e-8):
        return

    def shown(value: Any) -> str:
        return f"<{len(value)} values>" if isinstance(value, (list, tuple)) else repr(value)

    differing = [
        f"scheduler.config.{name}={shown(scheduler.config.get(name))} but the model's is {shown(trained.config[name])}"
        for name in ("trained_betas", "beta_start", "beta_end")
        if scheduler.config.get(name) != trained.config[name]
    ]
    largest = (alphas_cumprod - trained.alphas_cumprod).abs().max().item()
    raise ValueError(
        f"scheduler.alphas_cumprod differs from the model's training schedule by up to {largest:.3g} "
        f"({'; '.join(differing) or 'its betas differ'}): sample with the schedule the model was trained with, "
        f"built by {type(scheduler).__name__}.from_config(model.noise_scheduler.config)."
    )


class CodeFusionPipeline(CodeFusionPipelineHubMixin, DiffusionPipeline):
    r"""
    Generates code from natural language with a [`CodeFusionModel`]: the prompt is encoded once, `k` Gaussian
    canvases per prompt are denoised together by the scheduler, and the decoder reads tokens off the final canvas
    (cut at the first pad or eos). Candidates are ranked by the decoder's mean token log-probability.

    The scheduler is the sampling algorithm, swapped the diffusers way:
    [`CodeFusionScheduler`] (DDIM/DDPM steps, the default) or [`CodeFusionCommitScheduler`] (commits the decoder's
    surest tokens step by step, mask-predict style), e.g.
    `pipe.scheduler = CodeFusionCommitScheduler.from_config(pipe.scheduler.config)`. Saving, loading and pushing
    come from [`~codefusion_hf.hub_codefusion.CodeFusionPipelineHubMixin`].

    Args:
        model ([`CodeFusionModel`]): Encoder, denoiser and decoder.
        scheduler ([`CodeFusionScheduler`] or [`CodeFusionCommitScheduler`]): Sampler; its noise schedule must be
            the one the model was trained with.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): The code tokenizer (`len(tokenizer) ==
            model.config.vocab_size`). It also encodes prompts unless `prompt_tokenizer` is given.
        prompt_tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*): The encoder's own tokenizer, for
            encoders with their own vocabulary (e.g. a pretrained BERT-family encoder).
    """

    model_cpu_offload_seq = "model"
    _optional_components = ["prompt_tokenizer"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        model: CodeFusionModel,
        scheduler: CodeFusionScheduler,
        tokenizer: PreTrainedTokenizerBase,
        prompt_tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        super().__init__()
        config = model.config
        if len(tokenizer) != config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} tokens but model.config.vocab_size is {config.vocab_size}: "
                "use the code tokenizer the model was built for."
            )
        encoder_vocab_size = config.encoder_config.vocab_size
        if prompt_tokenizer is not None and len(prompt_tokenizer) > encoder_vocab_size:
            raise ValueError(
                f"prompt_tokenizer has {len(prompt_tokenizer)} tokens but the encoder's vocabulary has only "
                f"{encoder_vocab_size}: use the encoder's own tokenizer."
            )
        for name in ("num_train_timesteps", "noise_schedule", "prediction_type"):
            if scheduler.config[name] != getattr(config, name):
                raise ValueError(
                    f"scheduler.config.{name}={scheduler.config[name]!r} does not match the model's "
                    f"{name}={getattr(config, name)!r}: sample with the schedule the model was trained with."
                )
        check_same_noise_schedule(scheduler, model.noise_scheduler)
        self.register_modules(model=model, scheduler=scheduler, tokenizer=tokenizer, prompt_tokenizer=prompt_tokenizer)

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the running call; a step callback may change it (`pipe._guidance_scale`) for the
        steps after it, e.g. 1 to stop guiding."""
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        """The number of steps of the running call, so that a step callback knows which is the last."""
        return self._num_timesteps

    def check_inputs(
        self,
        prompt: str | list[str],
        num_inference_steps: int,
        num_return_sequences: int,
        max_length: int | None,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str],
        rounding: str | None = None,
        latents: torch.Tensor | None = None,
        timesteps: list[int] | None = None,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        stop_when_stable: int | None = None,
        canvas_margin: int | None = None,
        ranking: str = "log_prob",
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        condition_enhanced_timestep: int | None = None,
        code_length: int | str | None = None,
        length_beam: int | None = None,
    ) -> tuple[list[str] | None, int]:
        """The prompts as a list (None with `prompt_embeds`) and their number, after checking every argument."""
        prompts, num_prompts = self.check_prompt(prompt, prompt_embeds, prompt_attention_mask)
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        trained_timesteps = num_train_timesteps - self.model.config.min_train_timestep
        if timesteps is None and (
            not is_integer(num_inference_steps) or not 1 <= num_inference_steps <= trained_timesteps
        ):
            raise ValueError(
                f"num_inference_steps must be an integer from 1 to {trained_timesteps}, the timesteps the model was "
                f"trained on, got {num_inference_steps!r}."
            )
        if not is_integer(num_return_sequences) or num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be a positive integer, got {num_return_sequences!r}.")
        config = self.model.config
        canvas = config.max_code_length
        if max_length is not None and (not is_integer(max_length) or not 1 <= max_length <= canvas):
            raise ValueError(f"max_length must be an integer from 1 to the canvas size {canvas}, got {max_length!r}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if rounding is not None and rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be None (the model's default) or one of {ROUNDINGS}, got {rounding!r}.")
        if not is_finite_number(eta) or eta < 0:
            raise ValueError(f"eta must be a finite number >= 0 (0 is DDIM, 1 ancestral sampling), got {eta!r}.")
        if eta != 0 and "eta" not in self.scheduler_step_parameters():
            raise ValueError(
                f"eta={eta} sets the noise of stochastic steps, but {type(self.scheduler).__name__} draws fresh noise "
                "at every step and has none: leave eta at 0, or sample with CodeFusionScheduler."
            )
        if not is_finite_number(guidance_scale) or guidance_scale < 1:
            raise ValueError(
                f"guidance_scale must be a finite number >= 1 (1 turns guidance off), got {guidance_scale!r}."
            )
        if stop_when_stable is not None and (not is_integer(stop_when_stable) or stop_when_stable < 1):
            raise ValueError(
                f"stop_when_stable must be None (never stop early) or a number of steps >= 1, "
                f"got {stop_when_stable!r}."
            )
        if canvas_margin is not None:
            if not is_integer(canvas_margin) or not 0 <= canvas_margin <= canvas:
                raise ValueError(
                    f"canvas_margin must be None (the whole canvas) or an integer from 0 to {canvas}, "
                    f"got {canvas_margin!r}."
                )
            if not hasattr(self.scheduler, "committed_positions"):
                raise ValueError(
                    f"canvas_margin cuts the committed tail of the canvas, but {type(self.scheduler).__name__} "
                    "commits nothing: sample with CodeFusionCommitScheduler, or leave canvas_margin at None."
                )
        if ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}.")
        if condition_enhanced_timestep is not None and (
            not is_integer(condition_enhanced_timestep) or not 0 <= condition_enhanced_timestep < num_train_timesteps
        ):
            raise ValueError(
                f"condition_enhanced_timestep must be None (off) or an integer from 0 to {num_train_timesteps - 1}, "
                f"got {condition_enhanced_timestep!r}."
            )
        if (
            code_length is not None
            and code_length not in CODE_LENGTHS
            and (not is_integer(code_length) or not 1 <= code_length <= canvas)
        ):
            raise ValueError(
                f"code_length must be None, one of {CODE_LENGTHS} or an integer from 1 to {canvas}, "
                f"got {code_length!r}."
            )
        if code_length == "predicted" and not config.predict_length:
            raise ValueError(
                "code_length='predicted' needs a model with a length head (config.predict_length=True); this one has "
                "none: give the code length as an integer, or 'full' for the whole canvas."
            )
        most_lengths = min(num_return_sequences, canvas)
        if length_beam is not None and (not is_integer(length_beam) or not 1 <= length_beam <= most_lengths):
            raise ValueError(
                f"length_beam must be None or an integer from 1 to {most_lengths} (one code length per candidate at "
                f"most, num_return_sequences={num_return_sequences}, of the canvas's {canvas}), got {length_beam!r}."
            )
        expected_shape = (num_prompts * num_return_sequences, canvas, config.latent_dim)
        if latents is not None and tuple(latents.shape) != expected_shape:
            raise ValueError(
                f"latents must have shape {expected_shape} (prompts x num_return_sequences, canvas, latent_dim), "
                f"got {tuple(latents.shape)}."
            )
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs may name only {self._callback_tensor_inputs}, "
                f"got {sorted(unknown)}."
            )
        return prompts, num_prompts

    def check_prompt(
        self,
        prompt: str | list[str] | None,
        prompt_embeds: torch.Tensor | None,
        prompt_attention_mask: torch.Tensor | None,
    ) -> tuple[list[str] | None, int]:
        """The prompts as a list, or None for precomputed `prompt_embeds` (what `encode_prompt` returns), and how
        many there are."""
        if prompt_embeds is not None:
            if prompt is not None:
                raise ValueError("Pass prompt or prompt_embeds, not both.")
            width = self.model.config.hidden_size
            if (
                not isinstance(prompt_embeds, torch.Tensor)
                or prompt_embeds.ndim != 3
                or prompt_embeds.shape[-1] != width
            ):
                shape = tuple(prompt_embeds.shape) if isinstance(prompt_embeds, torch.Tensor) else type(prompt_embeds)
                raise ValueError(
                    f"prompt_embeds must be a (num_prompts, prompt_length, {width}) tensor, as encode_prompt returns "
                    f"it, got {shape}."
                )
            if prompt_attention_mask is not None and tuple(prompt_attention_mask.shape) != prompt_embeds.shape[:2]:
                raise ValueError(
                    f"prompt_attention_mask must have shape {tuple(prompt_embeds.shape[:2])} (num_prompts, "
                    f"prompt_length), got {tuple(prompt_attention_mask.shape)}."
                )
            return None, prompt_embeds.shape[0]
        if prompt_attention_mask is not None:
            raise ValueError("prompt_attention_mask goes with prompt_embeds: pass both, or only prompt.")
        if isinstance(prompt, (set, frozenset, Mapping)):
            raise ValueError(
                f"prompt must be a string or a list of strings, got a {type(prompt).__name__}: its order is not "
                "the order of the outputs. Pass list(...) of the prompts in the order you want them back."
            )
        # Any sequence of strings works, e.g. a `datasets` column.
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, Iterable) else prompt
        if not isinstance(prompts, list) or len(prompts) == 0:
            raise ValueError(f"prompt must be a non-empty string or a non-empty list of strings, got {prompt!r}.")
        for index, text in enumerate(prompts):
            if not isinstance(text, str):
                raise ValueError(f"prompt[{index}] must be a string, got {type(text).__name__}.")
            if not text.strip():
                raise ValueError(f"prompt[{index}] is empty: describe the code to generate.")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(
                    f"prompt[{index}] {text!r} holds {text[error.start]!r} at position {error.start}, which is not "
                    "a character (a lone surrogate, e.g. from bytes that were not UTF-8): decode the text as UTF-8 "
                    "first."
                ) from None
        return prompts, len(prompts)

    def check_generator(self, generator: Any, num_candidates: int) -> None:
        """A `torch.Generator`, None, or a list of one generator per candidate (prompts x num_return_sequences)."""
        if generator is None or isinstance(generator, torch.Generator):
            return
        if not isinstance(generator, list) or not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError(
                f"generator must be a torch.Generator, a list of them or None, got {type(generator).__name__}."
            )
        if len(generator) != num_candidates:
            raise ValueError(
                f"generator is a list of {len(generator)} generators, but the call draws {num_candidates} candidates "
                "(prompts x num_return_sequences): give one generator per candidate, or a single one."
            )

    def check_init_code(
        self,
        init_code: str | list[str] | list[list[str]] | None,
        strength: float | None,
        num_prompts: int,
        num_return_sequences: int,
        latents: torch.Tensor | None,
        timesteps: list[int] | None,
    ) -> list[str] | None:
        """The program each candidate starts from (prompt-major, `num_return_sequences` per prompt), checked; None
        without `init_code`."""
        if init_code is None:
            if strength is not None:
                raise ValueError("strength sets how far init_code is noised: pass init_code too, or no strength.")
            return None
        if strength is not None and (not is_finite_number(strength) or not 0 < strength <= 1):
            raise ValueError(f"strength must be a number in (0, 1], got {strength!r}.")
        if latents is not None or timesteps is not None:
            raise ValueError(
                "init_code makes the starting canvas and the steps: pass it without latents and timesteps."
            )
        if isinstance(init_code, str):
            per_prompt = [[init_code]] * num_prompts
        elif isinstance(init_code, (list, tuple)) and len(init_code) == num_prompts:
            per_prompt = [[item] if isinstance(item, str) else item for item in init_code]
        else:
            count = len(init_code) if isinstance(init_code, (list, tuple)) else type(init_code).__name__
            raise ValueError(
                f"init_code must be a string, or a list with one program (or one list of programs) per prompt: "
                f"{num_prompts} prompt(s), got {count}."
            )
        for index, programs in enumerate(per_prompt):
            if not isinstance(programs, (list, tuple)) or not programs:
                raise ValueError(f"init_code[{index}] must be a program or a non-empty list of programs.")
            for program in programs:
                if not isinstance(program, str) or not program.strip():
                    raise ValueError(f"init_code[{index}] holds {program!r}: every program must be non-empty code.")
        return [programs[j % len(programs)] for programs in per_prompt for j in range(num_return_sequences)]

    def encode_prompt(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize and encode the prompts once; returns the encoder states and the prompt attention mask (the call's
        `prompt_embeds` and `prompt_attention_mask`: encode with the model in eval mode, as a call does, to get the
        states a call with `prompt` would use)."""
        tokenizer = self.prompt_tokenizer or self.tokenizer
        max_prompt_length = self.model.config.max_prompt_length
        too_long = [i for i, ids in enumerate(tokenizer(prompts)["input_ids"]) if len(ids) > max_prompt_length]
        if too_long:
            logger.warning(
                f"{len(too_long)} prompt(s) (indices {too_long[:10]}) are longer than max_prompt_length="
                f"{max_prompt_length} tokens and were truncated."
            )
        inputs = tokenizer(
            prompts, padding=True, truncation=True, max_length=max_prompt_length, return_tensors="pt"
        ).to(device)
        return self.model.encode(inputs["input_ids"], inputs["attention_mask"]), inputs["attention_mask"]

    def scheduler_step_parameters(self) -> set[str]:
        """The keyword arguments the scheduler's `step` takes: a committing scheduler reads the decoder's logits and
        the code embeddings and has no `eta` (diffusers' pipelines inspect `step` the same way)."""
        return set(inspect.signature(self.scheduler.step).parameters)

    def resolve_rounding(self, rounding: str | None) -> str:
        """The rounding a call uses: the one asked for, else the one the model was trained for."""
        return rounding or self.model.config.self_condition_rounding

    def prepare_latents(
        self,
        batch_size: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The starting canvas: Gaussian noise drawn from `generator`, or the given `latents` on the device."""
        if latents is not None:
            return latents.to(device=device, dtype=dtype)
        config = self.model.config
        shape = (batch_size, config.max_code_length, config.latent_dim)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    def resolve_code_length(self, code_length: int | str | None, refining: bool = False) -> int | str:
        """The `code_length` a call uses: the one asked for, else `"predicted"` for a model with a length head that
        was trained on trimmed canvases (`config.canvas_margin` set; one trained on the whole canvas saw code only
        there), unless `refining` given code, whose length is its own; else `"full"`."""
        if code_length is not None:
            return code_length
        config = self.model.config
        trimmed = config.predict_length and config.canvas_margin is not None
        return "predicted" if trimmed and not refining else "full"

    def resolve_length_beam(self, length_beam: int | None, code_length: int | str, num_return_sequences: int) -> int:
        """The `length_beam` a call uses: the one asked for, else, on the predicted canvas (`code_length` as
        [`resolve_code_length`] gives it), the `DEFAULT_LENGTH_BEAM` likeliest lengths, at most one per candidate;
        else 1."""
        if length_beam is not None:
            return length_beam
        if code_length != "predicted":
            return 1
        return min(DEFAULT_LENGTH_BEAM, num_return_sequences, self.model.config.max_code_length)

    def code_lengths(
        self,
        code_length: int | str,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        num_return_sequences: int = 1,
        length_beam: int = 1,
    ) -> torch.LongTensor | None:
        """The code length to make room for on each candidate's canvas, `(num_prompts * num_return_sequences,)`: the
        given one, or one of the length head's `length_beam` most likely ones (candidate `i` of a prompt gets the
        `i % length_beam`-th; each at least 1 token, and distinct); None for the whole canvas (`"full"`)."""
        if code_length == "full":
            return None
        if code_length == "predicted":
            logits = self.model.length_logits(encoder_hidden_states, attention_mask)
            if length_beam == 1:
                likeliest = logits.argmax(dim=-1, keepdim=True).clamp(min=1)
            else:  # distinct lengths, of at least one token
                likeliest = logits[:, 1:].topk(length_beam, dim=-1).indices + 1
            ranks = torch.arange(num_return_sequences, device=likeliest.device) % length_beam
            return likeliest[:, ranks].flatten()
        num_rows = len(encoder_hidden_states) * num_return_sequences
        return torch.full((num_rows,), code_length, device=encoder_hidden_states.device)

    def canvas_lengths(self, code_lengths: torch.LongTensor) -> torch.LongTensor:
        """The canvas for each code length: the length plus the pad positions the model was trained with after the
        code (`config.canvas_margin`), at most the whole canvas."""
        config = self.model.config
        return (code_lengths + (config.canvas_margin or 0)).clamp(max=config.max_code_length)

    def canvas_groups(self, canvas_lengths: torch.LongTensor) -> list[torch.LongTensor]:
        """The candidates denoised together, as index tensors: from the longest canvas down, each group takes the
        next shorter canvases while its rows padded to its longest canvas stay within `MAX_CANVAS_PADDING` times
        their own positions or `CANVAS_PADDING_ALLOWANCE` positions more (a length beam's few canvases share one
        batch and one loop of steps, where a batch of prompts of very different lengths would compute mostly
        padding)."""
        lengths = canvas_lengths.tolist()
        groups, members, own = [], [], 0
        for length in sorted(set(lengths), reverse=True):
            rows = [i for i, row_length in enumerate(lengths) if row_length == length]
            if members:
                padded = (len(members) + len(rows)) * lengths[members[0]]
                merged_own = own + len(rows) * length
                if padded > max(MAX_CANVAS_PADDING * merged_own, merged_own + CANVAS_PADDING_ALLOWANCE):
                    groups.append(members)
                    members, own = [], 0
            members, own = members + rows, own + len(rows) * length
        groups.append(members)
        return [torch.tensor(group, device=canvas_lengths.device) for group in groups]

    def read_tokens(
        self, step: BaseOutput, canvas: torch.Tensor, rows: DenoisingRows
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The token ids of a step and their log-probabilities: those a committing scheduler holds, else the decoder's
        most likely token at every position of `canvas` (the rows' canvas or x0 estimate); pad, of log-probability 0,
        past each row's own canvas."""
        if getattr(step, "token_ids", None) is not None:
            token_ids, token_log_probs = step.token_ids, step.token_log_probs
        else:
            logits = self.model.decode(
                canvas, rows.encoder_hidden_states, rows.attention_mask, rows.prompt_cache, rows.code_attention_mask
            )
            token_log_probs, token_ids = most_likely_tokens(logits)
        past = rows.past_canvas
        return token_ids.masked_fill(past, self.model.config.pad_token_id), token_log_probs.masked_fill(past, 0.0)

    def settled_canvas_length(self, token_ids: torch.Tensor, committed: torch.Tensor, canvas_margin: int) -> int:
        """How much of the canvas is still worth computing: up to the last position, in any row, that is not a
        committed pad or eos, plus `canvas_margin` settled positions (what a model trained with that
        `canvas_margin` saw after the code)."""
        config = self.model.config
        settled = committed & ((token_ids == config.pad_token_id) | (token_ids == config.eos_token_id))
        positions = torch.arange(1, token_ids.shape[1] + 1, device=token_ids.device)
        last_unsettled = int((positions * ~settled).max())
        return max(1, min(token_ids.shape[1], last_unsettled + canvas_margin))

    def score_tokens(
        self,
        token_ids: torch.Tensor,
        token_log_probs: torch.Tensor,
        ranking: str = "log_prob",
        num_return_sequences: int = 1,
        canvas_lengths: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, the kept length of each row (up to the first pad or eos) and each row's ranking score.

        `ranking` is one of `RANKINGS`: `"log_prob"`, the mean log-probability of the kept tokens and the token that
        ends them; `"length_normalized"`, the mean over the kept tokens alone, -inf for empty code (the confident
        pad that ends short code no longer lifts it); `"consensus"`, the mean token-overlap F1 of the row's kept
        tokens with those of its prompt's other candidates (rows in groups of `num_return_sequences`), the
        minimum-Bayes-risk choice that DiffuSeq and DINOISER make, 1 for a lone candidate. `canvas_lengths`: each
        row's own canvas, when rows were sampled on canvases of different lengths (the positions past it hold pad and
        are not scored)."""
        config = self.model.config
        is_stop = (token_ids == config.pad_token_id) | (token_ids == config.eos_token_id)
        canvas = token_ids.shape[1]
        positions = torch.arange(canvas, device=token_ids.device)
        lengths = torch.where(is_stop, positions, canvas).min(dim=1).values
        if ranking == "consensus":
            return token_ids, lengths, consensus_scores(token_ids, lengths, num_return_sequences, config.vocab_size)
        scored = positions[None, :] <= lengths[:, None]
        if ranking == "length_normalized":
            scored = positions[None, :] < lengths[:, None]
        if canvas_lengths is not None:
            scored &= positions[None, :] < canvas_lengths[:, None]
        scores = (token_log_probs * scored).sum(dim=1) / scored.sum(dim=1)
        return token_ids, lengths, scores.nan_to_num(nan=-math.inf)  # 0 / 0: empty code, length-normalised

    def guided_denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        self_condition: torch.Tensor | None,
        guidance_scale: float = 1.0,
        unconditional_states: torch.Tensor | None = None,
        prompt_cache: CodeFusionPromptCache | None = None,
        unconditional_cache: CodeFusionPromptCache | None = None,
        code_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoiser's output; with `guidance_scale > 1`, classifier-free guidance (Ho & Salimans, 2022): the
        conditional and the unconditional outputs come from one batch of twice the rows, and the result is
        `unconditional + guidance_scale * (conditional - unconditional)`. The unconditional rows read
        `unconditional_states` (Gaussian noise, the prompt encoding of unconditional training) over an unmasked
        prompt, as the model saw them in training. `prompt_cache` and `unconditional_cache` are the
        [`~CodeFusionModel.cache_prompt`] of both prompt encodings; `code_attention_mask` as the model takes it."""
        if guidance_scale == 1:
            return self.model.denoise(
                latents,
                timesteps,
                encoder_hidden_states,
                attention_mask,
                self_condition,
                prompt_cache,
                code_attention_mask,
            )
        cache = None
        if prompt_cache is not None and unconditional_cache is not None:
            cache = CodeFusionPromptCache.cat([prompt_cache, unconditional_cache])
        output = self.model.denoise(
            torch.cat([latents, latents]),
            timesteps if timesteps.ndim == 0 else torch.cat([timesteps, timesteps]),
            torch.cat([encoder_hidden_states, unconditional_states]),
            torch.cat([attention_mask, torch.ones_like(attention_mask)]),
            None if self_condition is None else torch.cat([self_condition, self_condition]),
            cache,
            None if code_attention_mask is None else torch.cat([code_attention_mask, code_attention_mask]),
        )
        conditional, unconditional = output.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def trajectory_steps(self, return_trajectory: bool | Sequence[int], num_inference_steps: int) -> set[int]:
        """The step indices `return_trajectory` asks to record, checked."""
        if isinstance(return_trajectory, bool):
            return set(range(num_inference_steps)) if return_trajectory else set()
        if not isinstance(return_trajectory, Iterable) or isinstance(return_trajectory, str):
            raise ValueError(
                f"return_trajectory must be True, False or a list of step indices, got {return_trajectory!r}."
            )
        record_steps = set(return_trajectory)
        unknown_steps = [i for i in record_steps if not is_integer(i) or not 0 <= i < num_inference_steps]
        if unknown_steps:
            raise ValueError(
                f"return_trajectory must be True or step indices from 0 to {num_inference_steps - 1}, "
                f"got {unknown_steps}."
            )
        return record_steps

    def code_to_ids(self, code: list[str]) -> torch.LongTensor:
        """Code strings as the canvas holds them, `(len(code), max_code_length)` token ids padded with pad (longer code
        truncated): e.g. `self.model.embed_code(ids)`, noised with the scheduler, starts sampling from given code."""
        return self.tokenizer(
            code,
            add_special_tokens=False,
            truncation=True,
            max_length=self.model.config.max_code_length,
            padding="max_length",
            return_tensors="pt",
        )["input_ids"]

    def ids_to_text(self, token_ids: torch.Tensor, lengths: torch.Tensor, max_length: int | None) -> list[str]:
        limit = max_length or token_ids.shape[1]
        return self.tokenizer.batch_decode(
            [ids[: min(int(length), limit)] for ids, length in zip(token_ids.tolist(), lengths)],
            skip_special_tokens=True,
            clean_up_tokenization_spaces=False,
        )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 50,
        num_return_sequences: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        max_length: int | None = None,
        output_type: str = "text",
        return_dict: bool = True,
        return_trajectory: bool | Sequence[int] = False,
        callback_on_step_end: Callable[["CodeFusionPipeline", int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        *,
        timesteps: list[int] | None = None,
        eta: float = 0.0,
        latents: torch.Tensor | None = None,
        rounding: str | None = None,
        guidance_scale: float = 1.0,
        stop_when_stable: int | None = None,
        canvas_margin: int | None = None,
        ranking: str = "log_prob",
        init_code: str | list[str] | list[list[str]] | None = None,
        strength: float | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        condition_enhanced_timestep: int | None = None,
        code_length: int | str | None = None,
        length_beam: int | None = None,
    ) -> CodeFusionPipelineOutput | tuple:
        r"""
        Args:
            prompt: One natural-language description or a list of them (or `prompt_embeds` instead).
            num_inference_steps: Denoising steps, placed among the timesteps the model was trained on (from
                `config.min_train_timestep` to `num_train_timesteps - 1`), at most as many; 10-50 is the useful range.
            num_return_sequences: Candidates per prompt (k), each from its own starting noise.
            generator: Seeds the starting noise (and the noise of stochastic steps).
            max_length: Return at most this many code tokens per candidate (defaults to the whole canvas).
            output_type: `"text"`, `"pt"` (token ids) or `"latent"` (the final canvas).
            return_trajectory: `True` to record the decoded canvas at every step, or a list of step indices
                (0-based) to record, so the program can be watched being revised.
            callback_on_step_end: Called after each step as `callback(pipe, step_index, timestep, callback_kwargs)`;
                it may return a dict with a replacement `"latents"`, and read `pipe.num_timesteps` and
                `pipe.guidance_scale` (or set `pipe._guidance_scale` for the steps after it). With
                `stop_when_stable` or `canvas_margin`, its `latents` are those of the candidates still denoised,
                cut to the canvas still computed. Candidates on canvases of different lengths (`code_length`,
                `length_beam`) are denoised in batches of similar canvases (`canvas_groups`), the positions past
                each one's own canvas masked (the `latents` there are meaningless; the returned ones are pad): the
                steps, and the callback, run once for each batch, with the call's `guidance_scale` at its first step.
            callback_on_step_end_tensor_inputs: Tensors passed in `callback_kwargs`.
            timesteps: Custom timesteps, strictly decreasing, instead of `num_inference_steps` evenly placed ones;
                e.g. `[1100, 550]` with `latents` a canvas noised to step 1100, to refine a draft.
            eta: 0 for deterministic DDIM updates, 1 for DDPM ancestral sampling (schedulers with an `eta`).
            latents: The starting canvas, `(num_prompts * num_return_sequences, max_code_length, latent_dim)`, with
                each prompt's candidates next to each other; drawn from `generator` when not given. Cut to the
                call's canvas when `code_length` makes it shorter.
            rounding: How each step's x0 estimate is pulled onto code tokens (see
                [`~CodeFusionModel.round_estimate`]): `"none"` (not at all, the paper), `"nearest"`, `"decoder"` or
                `"decoder_mean"`. [`CodeFusionScheduler`] steps towards the rounded estimate;
                [`CodeFusionCommitScheduler`] always re-embeds the decoder's tokens, and the rounding shapes only the
                estimate a self-conditioned model reads at the next step. `None` (default) uses the rounding the
                model was trained for, `config.self_condition_rounding`.
            guidance_scale: Classifier-free guidance (not in the paper): values above 1 push every denoiser output
                away from the unconditional one, whose prompt encoding is Gaussian noise (see [`guided_denoise`]).
                It needs a model that learned unconditional generation: phase 1's unconditional task, kept in phase
                2 with `--prompt_dropout_probability`. Each step then costs two denoiser passes. 1 (default): off.
            stop_when_stable: Finish a candidate once its tokens have not changed for this many steps: its text is
                its tokens of that step, and it is no longer computed (the others go on). With
                [`CodeFusionScheduler`] the tokens are read by a decoder pass at every step. None (default): every
                candidate takes every step.
            canvas_margin: With [`CodeFusionCommitScheduler`]: stop computing the tail of the canvas once every
                candidate has committed pad (or eos) there, keeping this many settled positions after the last
                unsettled one (a model trained with the trainer's `canvas_margin` saw that many pads after the
                code). None (default): the whole canvas at every step.
            ranking: How each prompt's candidates are ordered (see [`score_tokens`]): `"log_prob"` (default),
                `"length_normalized"` or `"consensus"`.
            init_code: Refine code instead of starting from noise, as diffusers' img2img pipelines start from an
                image: one program for every prompt (a string), one per prompt (a list), or a list per prompt (its
                candidates start from its programs in turn). Each program is embedded, noised to `strength` of the
                schedule and denoised under the prompt (the repair use of CodeFusion's follow-up work).
            strength: With `init_code`, how much of the schedule is run, in (0, 1] (default 0.6): the last
                `round(num_inference_steps * strength)` of the `num_inference_steps` steps, from a program noised to
                the first of them. 1 noises it to the start of the schedule, almost pure noise.
            prompt_embeds: Encoded prompts instead of `prompt`, `(num_prompts, prompt_length, hidden_size)` as
                [`encode_prompt`] returns them, e.g. encoded once and reused across calls.
            prompt_attention_mask: Their attention mask, `(num_prompts, prompt_length)` (default: every position).
            condition_enhanced_timestep: DINOISER's condition-enhanced sampling (Ye et al., 2023; not in the paper):
                the denoiser is told this timestep at every step (e.g. `num_train_timesteps - 1`, the noisiest)
                instead of the step's own, so that it leans on the prompt rather than on the canvas; the x0
                estimate is still read at the true noise level. None (default): off.
            code_length: How long a canvas to sample on: `"predicted"`, room for the code length the model's
                length head predicts for each prompt (`config.predict_length`); an integer, room for
                code of that many tokens; `"full"`, the whole canvas of `max_code_length` positions. The room is the
                length plus `config.canvas_margin`, the pad positions the model saw after the code in training.
                None (default): `"predicted"` for a model with a length head trained on trimmed canvases
                (`config.canvas_margin` set), except with `init_code`; else `"full"`.
            length_beam: With `code_length="predicted"`, spread each prompt's candidates over the length head's
                `length_beam` most likely code lengths (candidate `i` on the `i % length_beam`-th), as Mask-Predict's
                length beam does, so that the candidates differ where one length would make them alike; they are
                ranked together. From 1 (every candidate on the likeliest length) to `num_return_sequences`. None
                (default): 3 (`DEFAULT_LENGTH_BEAM`, at most `num_return_sequences`) on the predicted canvas, else 1.

        Returns:
            [`CodeFusionPipelineOutput`], or a tuple `(code, scores, trajectory)` when `return_dict=False`.
        """
        prompts, num_prompts = self.check_inputs(
            prompt,
            num_inference_steps,
            num_return_sequences,
            max_length,
            output_type,
            callback_on_step_end_tensor_inputs,
            rounding,
            latents,
            timesteps,
            eta,
            guidance_scale,
            stop_when_stable,
            canvas_margin,
            ranking,
            prompt_embeds,
            prompt_attention_mask,
            condition_enhanced_timestep,
            code_length,
            length_beam,
        )
        self.check_generator(generator, num_prompts * num_return_sequences)
        drafts = self.check_init_code(init_code, strength, num_prompts, num_return_sequences, latents, timesteps)
        code_length = self.resolve_code_length(code_length, refining=drafts is not None)
        length_beam = self.resolve_length_beam(length_beam, code_length, num_return_sequences)
        if length_beam != 1 and code_length != "predicted":
            raise ValueError(
                f"length_beam={length_beam} spreads the candidates over the length head's likeliest code lengths, "
                f"but this call samples on code_length={code_length!r}: pass code_length='predicted', or leave "
                "length_beam at 1."
            )
        rounding = self.resolve_rounding(rounding)
        device = self._execution_device
        # Before the model changes mode: bad custom timesteps fail here with the model as it was.
        if timesteps is None:  # where the model was trained
            self.scheduler.set_timesteps(
                num_inference_steps, device=device, min_timestep=self.model.config.min_train_timestep
            )
        else:
            self.scheduler.set_timesteps(device=device, timesteps=timesteps)
        if drafts is not None:  # the end of the schedule only, as diffusers' img2img pipelines run it
            kept = max(1, round(len(self.scheduler.timesteps) * (0.6 if strength is None else strength)))
            self.scheduler.set_timesteps(device=device, timesteps=self.scheduler.timesteps[-kept:].tolist())
        record_steps = self.trajectory_steps(return_trajectory, len(self.scheduler.timesteps))
        self._guidance_scale, self._num_timesteps = guidance_scale, len(self.scheduler.timesteps)
        step_parameters = self.scheduler_step_parameters()
        reads_tokens = "logits" in step_parameters  # the scheduler commits the decoder's tokens
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling; the previous mode is restored below, also after an error
        try:
            if prompts is None:
                encoder_hidden_states = prompt_embeds.to(device=device, dtype=self.model.dtype)
                attention_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=device)
                if prompt_attention_mask is not None:
                    attention_mask = prompt_attention_mask.to(device=device, dtype=torch.long)
            else:
                encoder_hidden_states, attention_mask = self.encode_prompt(prompts, device)
            code_lengths = self.code_lengths(
                code_length, encoder_hidden_states, attention_mask, num_return_sequences, length_beam
            )
            num_rows = num_prompts * num_return_sequences
            config = self.model.config
            canvas_lengths = torch.full((num_rows,), config.max_code_length, device=device)
            if code_lengths is not None:
                canvas_lengths = self.canvas_lengths(code_lengths)
            longest = int(canvas_lengths.max())
            dtype = encoder_hidden_states.dtype
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_return_sequences, dim=0)
            attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
            # The noise of the whole canvas: a shorter canvas takes its first positions, the same noise as where the
            # canvases overlap.
            latents = self.prepare_latents(num_rows, dtype, device, generator, latents)
            if drafts is not None:  # the drafts' embeddings noised to the first step, with the drawn noise
                clean = self.model.embed_code(self.code_to_ids(drafts).to(device)).to(dtype)
                first = self.scheduler.timesteps[:1].expand(len(drafts))
                latents = self.scheduler.add_noise(clean, latents, first)
            code_embeddings = self.model.code_embedding_matrix() if reads_tokens or rounding == "nearest" else None
            step_kwargs = {"eta": eta} if "eta" in step_parameters else {}
            if reads_tokens:
                step_kwargs["code_embeddings"] = code_embeddings
            # The latest tokens, their log-probabilities and the canvas of every candidate, kept up to date where
            # candidates finish early or the canvas is cut; past a candidate's own canvas, pad.
            all_token_ids = torch.full((num_rows, longest), config.pad_token_id, dtype=torch.long, device=device)
            all_log_probs = torch.zeros(num_rows, longest, device=device)
            all_latents = latents[:, :longest].clone()
            stable_steps = torch.full((num_rows,), -1, device=device)  # steps each candidate's tokens held
            shrinks = stop_when_stable is not None or canvas_margin is not None  # rows or positions may be dropped
            schedule = self.scheduler.timesteps.tolist()
            # The tokens of every candidate after each recorded step, and the steps some candidate reached.
            snapshots = {step_index: all_token_ids.clone() for step_index in record_steps}
            reached = set()

            # Candidates of similar canvas lengths share a batch, the model masking the positions past each row's own
            # canvas, so each is computed as it would be on that canvas alone, where it was trained (a short program
            # on a long canvas was not); canvases too different for that padding to pay are denoised apart.
            for group in self.canvas_groups(canvas_lengths):
                self._guidance_scale = guidance_scale  # a callback's change lasts for its own group
                self.scheduler.set_timesteps(device=device, timesteps=schedule)  # a new sampling, nothing committed
                rows = DenoisingRows(
                    indices=group,
                    canvas_lengths=canvas_lengths[group],
                    latents=latents[group, : int(canvas_lengths[group].max())],
                    encoder_hidden_states=encoder_hidden_states[group],
                    attention_mask=attention_mask[group],
                    prompt_cache=self.model.cache_prompt(encoder_hidden_states[group]),  # the same at every step
                    generator=[generator[i] for i in group.tolist()] if isinstance(generator, list) else generator,
                )
                if guidance_scale > 1:  # drawn after the canvas, so guidance leaves the starting noise as it was
                    rows.unconditional_states = randn_tensor(
                        rows.encoder_hidden_states.shape, generator=rows.generator, device=device, dtype=dtype
                    )
                if "canvas_lengths" in step_parameters:
                    step_kwargs["canvas_lengths"] = rows.canvas_lengths
                last_step = -1
                for step_index, timestep in enumerate(self.progress_bar(self.scheduler.timesteps)):
                    last_step = step_index
                    if self.guidance_scale > 1 and rows.unconditional_states is None:  # turned on by a callback
                        rows.unconditional_states = randn_tensor(
                            rows.encoder_hidden_states.shape, generator=rows.generator, device=device, dtype=dtype
                        )
                    if self.guidance_scale > 1 and rows.unconditional_cache is None:
                        rows.unconditional_cache = self.model.cache_prompt(rows.unconditional_states)
                    code_attention_mask = rows.code_attention_mask
                    denoiser_timesteps = self.scheduler.denoiser_timesteps(timestep, rows.latents)
                    model_timesteps = denoiser_timesteps
                    if condition_enhanced_timestep is not None:
                        told = timestep.new_tensor(condition_enhanced_timestep)
                        model_timesteps = self.scheduler.denoiser_timesteps(told, rows.latents)
                    model_output = self.guided_denoise(
                        rows.latents,
                        model_timesteps,
                        rows.encoder_hidden_states,
                        rows.attention_mask,
                        rows.self_condition,
                        self.guidance_scale,
                        rows.unconditional_states,
                        rows.prompt_cache,
                        rows.unconditional_cache,
                        code_attention_mask,
                    )
                    estimate = self.scheduler.clip_original_sample(
                        self.scheduler.predict_original_sample(model_output, denoiser_timesteps, rows.latents)
                    )
                    logits = None
                    decoder_inputs = (
                        rows.encoder_hidden_states,
                        rows.attention_mask,
                        rows.prompt_cache,
                        code_attention_mask,
                    )
                    if rounding in DECODER_ROUNDINGS:  # every position's logits: one decoder pass serves both
                        logits = self.model.decode(estimate, *decoder_inputs)
                        if reads_tokens:
                            step_kwargs["logits"] = logits
                    elif reads_tokens:  # the head runs only where the scheduler reads tokens
                        decoder_states = self.model.decoder_states(estimate, *decoder_inputs)
                        step_kwargs["logits_at"] = lambda positions, states=decoder_states: self.model.lm_head(
                            states[positions]
                        )
                    if not reads_tokens or config.self_condition:  # else nothing reads the rounded estimate
                        estimate = self.model.round_estimate(
                            estimate, rounding, logits=logits, code_embeddings=code_embeddings
                        )
                    step = self.scheduler.step(
                        model_output,
                        timestep,
                        rows.latents,
                        generator=rows.generator,
                        pred_original_sample=estimate,
                        **step_kwargs,
                    )
                    rows.latents = step.prev_sample
                    if config.self_condition:
                        rows.self_condition = step.pred_original_sample
                    is_last = step_index + 1 == len(self.scheduler.timesteps)
                    if step_index in record_steps or (shrinks and not is_last):
                        token_ids, token_log_probs = self.read_tokens(step, step.pred_original_sample, rows)
                        length = token_ids.shape[1]
                        changed = (token_ids != all_token_ids[rows.indices, :length]).any(dim=1)
                        stable_steps[rows.indices] = torch.where(changed, 0, stable_steps[rows.indices] + 1)
                        all_token_ids[rows.indices, :length], all_log_probs[rows.indices, :length] = (
                            token_ids,
                            token_log_probs,
                        )
                    if step_index in record_steps:
                        snapshots[step_index][group] = all_token_ids[group]
                        reached.add(step_index)
                    if callback_on_step_end is not None:
                        callback_kwargs = {
                            name: {"latents": rows.latents}[name] for name in callback_on_step_end_tensor_inputs
                        }
                        callback_outputs = callback_on_step_end(self, step_index, int(timestep), callback_kwargs) or {}
                        rows.latents = callback_outputs.pop("latents", rows.latents)
                    if shrinks and not is_last:
                        keep = torch.ones_like(rows.indices, dtype=torch.bool)
                        if stop_when_stable is not None:
                            keep = stable_steps[rows.indices] < stop_when_stable
                        length = rows.latents.shape[1]
                        if canvas_margin is not None and keep.any():
                            length = self.settled_canvas_length(
                                all_token_ids[rows.indices[keep], :length],
                                self.scheduler.committed_positions[keep] | rows.past_canvas[keep],
                                canvas_margin,
                            )
                        if not keep.all() or length < rows.latents.shape[1]:
                            all_latents[rows.indices, : rows.latents.shape[1]] = rows.latents
                            rows = rows.select(keep, length)
                            self.scheduler.select(keep, length)
                            if len(rows.indices) == 0:
                                break

                if len(rows.indices):
                    # A committing scheduler's text is its committed tokens (a callback changes only the canvas it
                    # reads).
                    token_ids, token_log_probs = self.read_tokens(step, rows.latents, rows)
                    length = token_ids.shape[1]
                    all_token_ids[rows.indices, :length] = token_ids
                    all_log_probs[rows.indices, :length] = token_log_probs
                    all_latents[rows.indices, :length] = rows.latents
                for step_index in record_steps:  # steps after this group finished show its final tokens
                    if step_index > last_step:
                        snapshots[step_index][group] = all_token_ids[group]
            past_canvas = torch.arange(longest, device=device)[None, :] >= canvas_lengths[:, None]
            all_latents[past_canvas] = self.model.embed_code(torch.tensor(config.pad_token_id, device=device)).to(
                dtype
            )
            token_ids, lengths, scores = self.score_tokens(
                all_token_ids, all_log_probs, ranking, num_return_sequences, canvas_lengths
            )
            latents = all_latents
            trajectory = []
            for step_index in sorted(reached):
                step_token_ids = snapshots[step_index]
                step_lengths = self.score_tokens(step_token_ids, all_log_probs)[1]
                trajectory.append(
                    {
                        "step": step_index,
                        "timestep": schedule[step_index],
                        "code": self.ids_to_text(step_token_ids, step_lengths, max_length),
                    }
                )
            if not torch.isfinite(latents).all() or all_log_probs.isnan().any():
                raise ValueError(
                    "The model's outputs became NaN or inf while sampling, so the code would be meaningless: its "
                    f"weights may be damaged, or {self.model.dtype} overflows (sample in float32 or bfloat16)."
                )
        finally:
            self.model.train(was_training)

        # Rank each prompt's candidates by score, best first.
        scores = scores.view(num_prompts, num_return_sequences)
        order = scores.argsort(dim=1, descending=True)
        flat_order = (order + torch.arange(num_prompts, device=order.device)[:, None] * num_return_sequences).flatten()
        ranked_scores = scores.gather(1, order).tolist()

        def ranked(texts: list[str]) -> list[list[str]]:
            texts = [texts[i] for i in flat_order.tolist()]
            return [texts[i : i + num_return_sequences] for i in range(0, len(texts), num_return_sequences)]

        if output_type == "text":
            code = ranked(self.ids_to_text(token_ids, lengths, max_length))
        elif output_type == "pt":
            code = token_ids[flat_order].view(num_prompts, num_return_sequences, -1)[..., :max_length]
        else:
            code = latents[flat_order].view(num_prompts, num_return_sequences, *latents.shape[1:])
        for entry in trajectory:
            entry["code"] = ranked(entry["code"])
        self.maybe_free_model_hooks()

        if not return_dict:
            return (code, ranked_scores, trajectory or None)
        return CodeFusionPipelineOutput(code=code, scores=ranked_scores, trajectory=trajectory or None)


def consensus_scores(
    token_ids: torch.Tensor, lengths: torch.Tensor, num_return_sequences: int, vocab_size: int
) -> torch.Tensor:
    """Each row's mean token-overlap F1 (bags of kept token ids) with the other rows of its group of
    `num_return_sequences`; 1 for a group of one, and between two empty rows."""
    kept = torch.arange(token_ids.shape[1], device=token_ids.device)[None, :] < lengths[:, None]
    counts = torch.zeros(len(token_ids), vocab_size, device=token_ids.device).scatter_add_(1, token_ids, kept.float())
    counts = counts.view(-1, num_return_sequences, vocab_size)  # (prompts, k, vocabulary)
    sizes = counts.sum(dim=-1)
    scores = torch.zeros_like(sizes) if num_return_sequences > 1 else torch.ones_like(sizes)
    for i in range(num_return_sequences):  # k is small: pairs one at a time keep memory at one (prompts, vocabulary)
        for j in range(num_return_sequences):
            if i != j:
                overlap = torch.minimum(counts[:, i], counts[:, j]).sum(dim=-1)
                total = sizes[:, i] + sizes[:, j]
                scores[:, i] += torch.where(total > 0, 2 * overlap / total.clamp(min=1), 1.0)
    return (scores / max(num_return_sequences - 1, 1)).flatten()


def is_finite_number(value: Any) -> bool:
    """A finite int or float that is not a bool (a float argument such as `eta` given as `True` is a mistake)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    """An integer (a Python or NumPy int) that is not a bool (`True` would otherwise pass as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


__all__ = ["CodeFusionPipeline", "CodeFusionPipelineOutput"]
