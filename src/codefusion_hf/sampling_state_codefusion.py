"""The state of one CodeFusion call while it samples: the candidate rows still being denoised, and what every
candidate has produced so far."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .canvas_planning_codefusion import settled_canvas_length
from .modeling_codefusion import CodeFusionPromptCache
from .sampling_options_codefusion import SamplingOptions
from .scheduling_codefusion import CodeFusionScheduler


@dataclass
class SamplingPlan:
    """What every step of a call reads, fixed before the first: the resolved options, the timesteps, the steps to
    record, the code embedding matrix where the scheduler or the rounding reads it, and the step callback."""

    options: SamplingOptions
    schedule: list[int]
    record_steps: set[int]
    code_embeddings: torch.Tensor | None = None
    callback_on_step_end: Callable | None = None
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)
    # The end of `schedule` that candidates starting from retrieved drafts run (`draft_candidates`).
    draft_schedule: list[int] | None = None

    @property
    def shrinks(self) -> bool:
        """Whether rows or canvas positions may stop being computed before the last step."""
        return self.options.stop_when_stable is not None or self.options.settled_margin is not None


@dataclass
class DenoisingRows:
    """What the candidates still being denoised read at every step. `stop_when_stable` and `settled_margin`
    `shrink` it as candidates finish and as the tail of the canvas settles, so that settled work is not computed
    again."""

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

    @classmethod
    def of_group(
        cls,
        group: torch.LongTensor,
        canvas_lengths: torch.LongTensor,
        latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None,
        cache_prompt: Callable[[torch.Tensor], CodeFusionPromptCache],
    ) -> "DenoisingRows":
        """The candidates `group` of the call's rows, on the longest of their canvases."""
        return cls(
            indices=group,
            canvas_lengths=canvas_lengths[group],
            latents=latents[group, : int(canvas_lengths[group].max())],
            encoder_hidden_states=encoder_hidden_states[group],
            attention_mask=attention_mask[group],
            prompt_cache=cache_prompt(encoder_hidden_states[group]),  # the same at every step
            generator=[generator[i] for i in group.tolist()] if isinstance(generator, list) else generator,
        )

    def shrink(self, keep: torch.BoolTensor, canvas_length: int, scheduler: CodeFusionScheduler) -> "DenoisingRows":
        """The rows `keep`, on the first `canvas_length` positions of the canvas, with the scheduler's per-row state
        cut the same way: the two must agree on which rows and positions each later step computes."""
        scheduler.select(keep, canvas_length)
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

    def prepare_guidance(self, cache_prompt: Callable[[torch.Tensor], CodeFusionPromptCache]) -> None:
        """The unconditional prompt classifier-free guidance reads for these rows (Gaussian noise, as unconditional
        training saw it), drawn from their generator when guidance turns on: after the starting canvas, so that
        guidance leaves the starting noise as it was."""
        if self.unconditional_states is None:
            self.unconditional_states = randn_tensor(
                self.encoder_hidden_states.shape,
                generator=self.generator,
                device=self.latents.device,
                dtype=self.encoder_hidden_states.dtype,
            )
        if self.unconditional_cache is None:
            self.unconditional_cache = cache_prompt(self.unconditional_states)

    # Computed once for these rows: their canvas changes only through `shrink`, which makes new rows.
    @cached_property
    def past_canvas(self) -> torch.BoolTensor:
        """`(rows, canvas_length)`: True at the positions past each row's own canvas."""
        positions = torch.arange(self.latents.shape[1], device=self.latents.device)
        return positions[None, :] >= self.canvas_lengths[:, None]

    @cached_property
    def code_attention_mask(self) -> torch.Tensor | None:
        """The model's `code_attention_mask` for these rows: None when every row fills the canvas."""
        return (~self.past_canvas).long() if self.past_canvas.any() else None


@dataclass
class CandidateResults:
    """What every candidate of the call (in call order) has produced so far: its latest tokens, their
    log-probabilities and its canvas, kept up to date where candidates finish early or the canvas is cut (pad past a
    candidate's own canvas); the steps each candidate's tokens held; and the tokens after each recorded step."""

    token_ids: torch.LongTensor
    log_probs: torch.Tensor
    latents: torch.Tensor
    stable_steps: torch.LongTensor
    snapshots: dict[int, torch.LongTensor] = field(default_factory=dict)
    reached: set[int] = field(default_factory=set)  # the recorded steps some candidate reached

    @classmethod
    def start(
        cls, latents: torch.Tensor, canvas_length: int, pad_token_id: int, record_steps: set[int]
    ) -> "CandidateResults":
        """Nothing read yet for the candidates starting from `latents`, on canvases of at most `canvas_length`."""
        num_rows, device = len(latents), latents.device
        token_ids = torch.full((num_rows, canvas_length), pad_token_id, dtype=torch.long, device=device)
        return cls(
            token_ids=token_ids,
            log_probs=torch.zeros(num_rows, canvas_length, device=device),
            latents=latents[:, :canvas_length].clone(),
            stable_steps=torch.full((num_rows,), -1, device=device),
            snapshots={step_index: token_ids.clone() for step_index in record_steps},
        )

    def update(self, rows: DenoisingRows, token_ids: torch.LongTensor, token_log_probs: torch.Tensor) -> None:
        """The tokens the rows read at a step; a row's count of steps its tokens held restarts where they changed."""
        indices, length = rows.indices, token_ids.shape[1]
        changed = (token_ids != self.token_ids[indices, :length]).any(dim=1)
        self.stable_steps[indices] = torch.where(changed, 0, self.stable_steps[indices] + 1)
        self.token_ids[indices, :length], self.log_probs[indices, :length] = token_ids, token_log_probs

    def keep_latents(self, rows: DenoisingRows) -> None:
        """The rows' canvas as it stands, before they shrink or finish."""
        self.latents[rows.indices, : rows.latents.shape[1]] = rows.latents

    def finish(self, rows: DenoisingRows, token_ids: torch.LongTensor, token_log_probs: torch.Tensor) -> None:
        """The final tokens and canvas of the rows that took every step."""
        length = token_ids.shape[1]
        self.token_ids[rows.indices, :length] = token_ids
        self.log_probs[rows.indices, :length] = token_log_probs
        self.keep_latents(rows)

    def snapshot(self, step_index: int, group: torch.LongTensor) -> None:
        """Record the tokens of the candidates of `group` after step `step_index`."""
        self.snapshots[step_index][group] = self.token_ids[group]
        self.reached.add(step_index)

    def snapshot_finished(self, group: torch.LongTensor, last_step: int) -> None:
        """The recorded steps after the last one `group` took show its final tokens."""
        for step_index in self.snapshots:
            if step_index > last_step:
                self.snapshots[step_index][group] = self.token_ids[group]

    def finish_call(self, canvas_lengths: torch.LongTensor, pad_embedding: torch.Tensor) -> None:
        """Pad past each candidate's own canvas, and refuse outputs that are NaN or inf."""
        past_canvas = torch.arange(self.latents.shape[1], device=self.latents.device) >= canvas_lengths[:, None]
        self.latents[past_canvas] = pad_embedding.to(self.latents.dtype)
        if not torch.isfinite(self.latents).all() or self.log_probs.isnan().any():
            raise ValueError(
                "The model's outputs became NaN or inf while sampling, so the code would be meaningless: its "
                f"weights may be damaged, or {self.latents.dtype} overflows (sample in float32 or bfloat16)."
            )

    def trajectory(
        self, schedule: list[int], to_text: Callable[[torch.LongTensor], list[str]]
    ) -> list[dict[str, int | list[str]]]:
        """One entry per recorded step some candidate reached: its index, timestep and every candidate's code."""
        return [
            {"step": step_index, "timestep": schedule[step_index], "code": to_text(self.snapshots[step_index])}
            for step_index in sorted(self.reached)
        ]


def settled_rows(
    rows: DenoisingRows,
    step: BaseOutput,
    results: CandidateResults,
    options: SamplingOptions,
    scheduler: CodeFusionScheduler,
    stop_token_ids: tuple[int, ...],
) -> DenoisingRows:
    """The rows still worth computing after `step`: without the candidates whose tokens held `stop_when_stable`
    steps, and on the canvas up to `settled_margin` positions after the last one not settled on a committed stop
    token (pad or eos); `rows` itself when nothing settled."""
    keep = torch.ones_like(rows.indices, dtype=torch.bool)
    if options.stop_when_stable is not None:
        keep = results.stable_steps[rows.indices] < options.stop_when_stable
    length = rows.latents.shape[1]
    if options.settled_margin is not None and keep.any():
        token_ids = results.token_ids[rows.indices[keep], :length]
        ends = torch.isin(token_ids, torch.tensor(stop_token_ids, device=token_ids.device))
        committed = step.committed_positions[keep] | rows.past_canvas[keep]
        length = settled_canvas_length(committed & ends, options.settled_margin)
    if keep.all() and length == rows.latents.shape[1]:
        return rows
    results.keep_latents(rows)
    return rows.shrink(keep, length, scheduler)


__all__ = ["CandidateResults", "DenoisingRows", "SamplingPlan", "settled_rows"]
