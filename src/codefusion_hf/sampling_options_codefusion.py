"""The arguments of a CodeFusion call: the sampling options as one object, from the command line through evaluation to
the pipeline, and the checks that turn every argument into what the call runs (each error names the argument)."""

import math
import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DiffusionPipeline

from .constants import RANKINGS, ROUNDINGS
from .scheduling_codefusion import CodeFusionScheduler
from .scheduling_codefusion_commit import CodeFusionCommitScheduler

if TYPE_CHECKING:
    from .configuration_codefusion import CodeFusionConfig

OUTPUT_TYPES = ("text", "pt", "latent")
CODE_LENGTHS = ("predicted", "full")
# The predicted canvas spreads a prompt's candidates over this many likeliest lengths by default (research/NOTES.md,
# the full-budget entry, measured the gain at top-5).
DEFAULT_LENGTH_BEAM = 3
# With `init_code`, the share of the schedule run when no `strength` is given.
DEFAULT_STRENGTH = 0.6


@dataclass(frozen=True)
class SamplingOptions:
    """How a [`CodeFusionPipeline`] call samples: its keyword arguments of the same names (see the call's docstring),
    plus `commit_tokens`, which samples with [`CodeFusionCommitScheduler`] (see `prepare_pipeline`). `None` leaves
    the choice to the pipeline; a call reports what it chose as `output.settings`, a `SamplingOptions` with every
    choice made, so that what a call ran is recorded as it was run."""

    num_inference_steps: int = 50
    num_return_sequences: int = 1
    timesteps: list[int] | None = None
    eta: float = 0.0
    rounding: str | None = None
    guidance_scale: float = 1.0
    stop_when_stable: int | None = None
    settled_margin: int | None = None
    ranking: str = "log_prob"
    strength: float | None = None
    condition_enhanced_timestep: int | None = None
    code_length: int | str | None = None
    length_beam: int | None = None
    draft_candidates: int = 0
    commit_tokens: bool = False

    def call_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of a pipeline call (`pipe(prompt, **options.call_kwargs())`)."""
        return {field.name: getattr(self, field.name) for field in fields(self) if field.name != "commit_tokens"}

    def prepare_pipeline(self, pipe: DiffusionPipeline) -> DiffusionPipeline:
        """`pipe`, or with `commit_tokens` a pipeline of the same components sampling with
        [`CodeFusionCommitScheduler`] on the same schedule (`pipe` keeps its own scheduler)."""
        if not self.commit_tokens or pipe.scheduler.commits_tokens:
            return pipe
        scheduler = CodeFusionCommitScheduler.from_config(pipe.scheduler.config)
        return type(pipe)(**pipe.components | {"scheduler": scheduler})

    def check(self, *, config: "CodeFusionConfig", scheduler: CodeFusionScheduler) -> None:
        """Raise a ValueError naming the first option that the model (`config`) or the scheduler cannot sample
        with, and how to fix it."""
        num_train_timesteps = scheduler.config.num_train_timesteps
        trained_timesteps = num_train_timesteps - config.min_train_timestep
        steps = self.num_inference_steps
        if self.timesteps is None and (not is_integer(steps) or not 1 <= steps <= trained_timesteps):
            raise ValueError(
                f"num_inference_steps must be an integer from 1 to {trained_timesteps}, the timesteps the model was "
                f"trained on, got {steps!r}."
            )
        k = self.num_return_sequences
        if not is_integer(k) or k < 1:
            raise ValueError(f"num_return_sequences must be a positive integer, got {k!r}.")
        if self.rounding is not None and self.rounding not in ROUNDINGS:
            raise ValueError(
                f"rounding must be None (the model's default) or one of {ROUNDINGS}, got {self.rounding!r}."
            )
        if not is_finite_number(self.eta) or self.eta < 0:
            raise ValueError(f"eta must be a finite number >= 0 (0 is DDIM, 1 ancestral sampling), got {self.eta!r}.")
        if self.eta != 0 and scheduler.commits_tokens:
            raise ValueError(
                f"eta={self.eta} sets the noise of stochastic steps, but {type(scheduler).__name__} draws fresh noise "
                "at every step and has none: leave eta at 0, or sample with CodeFusionScheduler."
            )
        if not is_finite_number(self.guidance_scale) or self.guidance_scale < 1:
            raise ValueError(
                f"guidance_scale must be a finite number >= 1 (1 turns guidance off), got {self.guidance_scale!r}."
            )
        if self.stop_when_stable is not None and (not is_integer(self.stop_when_stable) or self.stop_when_stable < 1):
            raise ValueError(
                f"stop_when_stable must be None (never stop early) or a number of steps >= 1, "
                f"got {self.stop_when_stable!r}."
            )
        canvas = config.max_code_length
        if self.settled_margin is not None:
            if not is_integer(self.settled_margin) or not 0 <= self.settled_margin <= canvas:
                raise ValueError(
                    f"settled_margin must be None (the whole canvas) or an integer from 0 to {canvas}, "
                    f"got {self.settled_margin!r}."
                )
            if not scheduler.commits_tokens:
                raise ValueError(
                    f"settled_margin cuts the committed tail of the canvas, but {type(scheduler).__name__} commits "
                    "nothing: sample with CodeFusionCommitScheduler, or leave settled_margin at None."
                )
        if self.ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS}, got {self.ranking!r}.")
        told = self.condition_enhanced_timestep
        if told is not None and (not is_integer(told) or not 0 <= told < num_train_timesteps):
            raise ValueError(
                f"condition_enhanced_timestep must be None (off) or an integer from 0 to {num_train_timesteps - 1}, "
                f"got {told!r}."
            )
        code_length = self.code_length
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
        most_lengths = min(k, canvas)
        if self.length_beam is not None and (
            not is_integer(self.length_beam) or not 1 <= self.length_beam <= most_lengths
        ):
            raise ValueError(
                f"length_beam must be None or an integer from 1 to {most_lengths} (one code length per candidate at "
                f"most, num_return_sequences={k}, of the canvas's {canvas}), got {self.length_beam!r}."
            )
        if not is_integer(self.draft_candidates) or not 0 <= self.draft_candidates <= k:
            raise ValueError(
                f"draft_candidates must be an integer from 0 to num_return_sequences={k} (the candidates of a prompt "
                f"that start from its retrieved neighbours), got {self.draft_candidates!r}."
            )

    def resolved(
        self, *, config: "CodeFusionConfig", scheduler: CodeFusionScheduler, refining: bool
    ) -> "SamplingOptions":
        """The options with every choice left to the pipeline made, for a call that samples with `scheduler` and,
        when `refining`, starts from given code:

        - `rounding`: the one the model was trained for, `config.self_condition_rounding`;
        - `code_length`: `"predicted"` for a model with a length head trained on trimmed canvases
          (`config.canvas_margin` set; one trained on the whole canvas saw code only there), unless refining given
          code, whose length is its own; else `"full"`;
        - `length_beam`: on the predicted canvas `DEFAULT_LENGTH_BEAM` lengths, at most one per candidate; else 1;
        - `strength`: `DEFAULT_STRENGTH` when refining or drafting (`draft_candidates`);
        - `commit_tokens`: whether `scheduler` commits tokens."""
        code_length = self.code_length
        if code_length is None:
            trimmed = config.predict_length and config.canvas_margin is not None
            code_length = "predicted" if trimmed and not refining else "full"
        length_beam = self.length_beam
        if length_beam is None:
            length_beam = 1
            if code_length == "predicted":
                length_beam = min(DEFAULT_LENGTH_BEAM, self.num_return_sequences, config.max_code_length)
        if length_beam != 1 and code_length != "predicted":
            raise ValueError(
                f"length_beam={length_beam} spreads the candidates over the length head's likeliest code lengths, "
                f"but this call samples on code_length={code_length!r}: pass code_length='predicted', or leave "
                "length_beam at 1."
            )
        drafting = refining or self.draft_candidates > 0
        strength = self.strength if self.strength is not None or not drafting else DEFAULT_STRENGTH
        return replace(
            self,
            num_inference_steps=len(self.timesteps) if self.timesteps is not None else self.num_inference_steps,
            rounding=self.rounding or config.self_condition_rounding,
            code_length=code_length,
            length_beam=length_beam,
            strength=strength,
            commit_tokens=scheduler.commits_tokens,
        )


def settled_margin_argument(settled_margin: int | None, canvas_margin: int | None) -> int | None:
    """`settled_margin`, or the deprecated name it had, `canvas_margin` (which named the trainer's pad margin too),
    with a FutureWarning."""
    if canvas_margin is None:
        return settled_margin
    if settled_margin is not None:
        raise ValueError("Pass settled_margin only: canvas_margin is its deprecated name.")
    warnings.warn(
        "The call's canvas_margin is deprecated and will be removed: pass settled_margin (the same value). "
        "canvas_margin now names only the trainer's pad margin (config.canvas_margin).",
        FutureWarning,
        stacklevel=3,
    )
    return canvas_margin


def check_inputs(
    options: SamplingOptions,
    *,
    config: "CodeFusionConfig",
    scheduler: CodeFusionScheduler,
    prompt: str | list[str] | None,
    prompt_embeds: torch.Tensor | None,
    prompt_attention_mask: torch.Tensor | None,
    output_type: str,
    max_length: int | None,
    latents: torch.Tensor | None,
    generator: Any,
    init_code: str | list[str] | list[list[str]] | None,
    callback_on_step_end_tensor_inputs: Sequence[str],
    callback_tensor_inputs: Sequence[str],
) -> tuple[list[str] | None, list[str] | None, SamplingOptions]:
    """Check every argument of a pipeline call; returns the prompts as a list (None with `prompt_embeds`), the
    program each candidate starts from (None without `init_code`) and the `options` resolved."""
    prompts, num_prompts = check_prompt(prompt, prompt_embeds, prompt_attention_mask, hidden_size=config.hidden_size)
    options.check(config=config, scheduler=scheduler)
    check_outputs(
        output_type=output_type,
        max_length=max_length,
        max_code_length=config.max_code_length,
        callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        callback_tensor_inputs=callback_tensor_inputs,
    )
    k = options.num_return_sequences
    drafts = check_start(
        latents=latents,
        expected_shape=(num_prompts * k, config.max_code_length, config.latent_dim),
        generator=generator,
        init_code=init_code,
        strength=options.strength,
        timesteps=options.timesteps,
        num_prompts=num_prompts,
        num_return_sequences=k,
        drafting=options.draft_candidates > 0,
    )
    return prompts, drafts, options.resolved(config=config, scheduler=scheduler, refining=drafts is not None)


def check_prompt(
    prompt: str | list[str] | None,
    prompt_embeds: torch.Tensor | None,
    prompt_attention_mask: torch.Tensor | None,
    *,
    hidden_size: int,
) -> tuple[list[str] | None, int]:
    """The prompts as a list, or None for precomputed `prompt_embeds` (what `encode_prompt` returns), and how many
    there are."""
    if prompt_embeds is not None:
        if prompt is not None:
            raise ValueError("Pass prompt or prompt_embeds, not both.")
        if (
            not isinstance(prompt_embeds, torch.Tensor)
            or prompt_embeds.ndim != 3
            or prompt_embeds.shape[-1] != hidden_size
        ):
            shape = tuple(prompt_embeds.shape) if isinstance(prompt_embeds, torch.Tensor) else type(prompt_embeds)
            raise ValueError(
                f"prompt_embeds must be a (num_prompts, prompt_length, {hidden_size}) tensor, as encode_prompt "
                f"returns it, got {shape}."
            )
        expected = tuple(prompt_embeds.shape[:2])
        if prompt_attention_mask is not None and (
            not isinstance(prompt_attention_mask, torch.Tensor) or tuple(prompt_attention_mask.shape) != expected
        ):
            given = (
                tuple(prompt_attention_mask.shape)
                if isinstance(prompt_attention_mask, torch.Tensor)
                else f"a {type(prompt_attention_mask).__name__}"
            )
            raise ValueError(
                f"prompt_attention_mask must be a tensor of shape {expected} (num_prompts, prompt_length), as "
                f"encode_prompt returns it, got {given}."
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


def check_outputs(
    *,
    output_type: str,
    max_length: int | None,
    max_code_length: int,
    callback_on_step_end_tensor_inputs: Sequence[str],
    callback_tensor_inputs: Sequence[str],
) -> None:
    """What the call returns and hands its step callback."""
    if max_length is not None and (not is_integer(max_length) or not 1 <= max_length <= max_code_length):
        raise ValueError(
            f"max_length must be an integer from 1 to the canvas size {max_code_length}, got {max_length!r}."
        )
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
    unknown = set(callback_on_step_end_tensor_inputs) - set(callback_tensor_inputs)
    if unknown:
        raise ValueError(
            f"callback_on_step_end_tensor_inputs may name only {list(callback_tensor_inputs)}, got {sorted(unknown)}."
        )


def check_start(
    *,
    latents: torch.Tensor | None,
    expected_shape: tuple[int, ...],
    generator: Any,
    init_code: str | list[str] | list[list[str]] | None,
    strength: float | None,
    timesteps: list[int] | None,
    num_prompts: int,
    num_return_sequences: int,
    drafting: bool = False,
) -> list[str] | None:
    """Check what the starting canvas is made of (given `latents`, the `generator` of its noise, or code to refine);
    returns the program each candidate starts from (prompt-major, `num_return_sequences` per prompt), None without
    `init_code`."""
    if latents is not None and tuple(latents.shape) != expected_shape:
        raise ValueError(
            f"latents must have shape {expected_shape} (prompts x num_return_sequences, canvas, latent_dim), "
            f"got {tuple(latents.shape)}."
        )
    num_candidates = num_prompts * num_return_sequences
    if generator is not None and not isinstance(generator, torch.Generator):
        if not isinstance(generator, list) or not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError(
                f"generator must be a torch.Generator, a list of them or None, got {type(generator).__name__}."
            )
        if len(generator) != num_candidates:
            raise ValueError(
                f"generator is a list of {len(generator)} generators, but the call draws {num_candidates} "
                "candidates (prompts x num_return_sequences): give one generator per candidate, or a single one."
            )
    if init_code is None and strength is not None and not drafting:
        raise ValueError(
            "strength sets how far init_code is noised: pass init_code too (or draft_candidates), or no strength."
        )
    if strength is not None and (not is_finite_number(strength) or not 0 < strength <= 1):
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}.")
    if init_code is None:
        return None
    if drafting:
        raise ValueError("init_code and draft_candidates both choose where candidates start: pass one of them.")
    if latents is not None or timesteps is not None:
        raise ValueError("init_code makes the starting canvas and the steps: pass it without latents and timesteps.")
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


def trajectory_steps(return_trajectory: bool | Sequence[int], num_inference_steps: int) -> set[int]:
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
            f"return_trajectory must be True or step indices from 0 to {num_inference_steps - 1}, got {unknown_steps}."
        )
    return record_steps


def is_finite_number(value: Any) -> bool:
    """A finite int or float that is not a bool (a float argument such as `eta` given as `True` is a mistake)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    """An integer (a Python or NumPy int) that is not a bool (`True` would otherwise pass as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


__all__ = ["SamplingOptions", "check_inputs"]
