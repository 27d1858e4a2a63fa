"""Committing sampler for embedding diffusion: mask-predict's schedule (Ghazvininejad et al., 2019) on the continuous
code canvas."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import SchedulerMixin  # noqa: F401 (diffusers' loader looks a component's base class up in its module)
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .scheduling_codefusion import CodeFusionScheduler


def most_likely_tokens(logits: torch.Tensor, chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probability and id of the most likely token at each position of `(..., vocab_size)` logits, as
    `logits.log_softmax(-1).max(-1)` gives them, as the top logit minus the log-sum-exp. Computed `chunk_size`
    positions at a time: the float32 temporaries then stay in the CPU's cache instead of being freshly allocated
    at the size of all the logits (the same values, faster on a CPU)."""
    flat_logits = logits.reshape(-1, logits.shape[-1])
    log_probs = torch.empty(flat_logits.shape[0], dtype=torch.float32, device=logits.device)
    token_ids = torch.empty(flat_logits.shape[0], dtype=torch.long, device=logits.device)
    for start in range(0, flat_logits.shape[0], chunk_size):
        chunk = flat_logits[start : start + chunk_size].float()
        top_logits, token_ids[start : start + chunk_size] = chunk.max(dim=-1)
        log_probs[start : start + chunk_size] = top_logits - chunk.logsumexp(dim=-1)
    return log_probs.view(logits.shape[:-1]), token_ids.view(logits.shape[:-1])


@dataclass
class CodeFusionCommitSchedulerOutput(BaseOutput):
    """
    Args:
        prev_sample (`torch.Tensor` of shape `(batch_size, canvas_length, latent_dim)`):
            The next canvas: committed tokens' embeddings at t = 0, elsewhere the decoder's tokens re-noised to the
            next timestep.
        pred_original_sample (`torch.Tensor` of the same shape):
            The x0 estimate of this step, what a self-conditioned denoiser reads at the next step.
        token_ids (`torch.LongTensor` of shape `(batch_size, canvas_length)`):
            The current token at every position: the committed ones, and this step's decoder tokens elsewhere.
        token_log_probs (`torch.Tensor` of the same shape):
            The decoder's log-probability of each of those tokens, from the step that chose it.
        committed_positions (`torch.BoolTensor` of the same shape):
            The positions committed after this step, whose tokens the next step keeps.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor
    token_ids: torch.LongTensor
    token_log_probs: torch.Tensor
    committed_positions: torch.BoolTensor | None = None


class CodeFusionCommitScheduler(CodeFusionScheduler):
    """
    Commits the decoder's most confident tokens step by step, as mask-predict does. After step `i` of `n`, the
    `ceil(canvas_length * (i + 1) / n)` positions with the highest log-probabilities are committed (positions
    committed earlier may be released) and kept as clean token embeddings at t = 0; the other positions get the
    decoder's tokens re-noised with fresh noise to the next timestep. After the last step every position is
    committed, and the pipeline's text comes from the committed tokens. Not in the paper; models trained with
    `config.commit_probability` have seen partly committed canvases.

    Same schedule and configuration as [`CodeFusionScheduler`], so either loads the other's config:
    `pipe.scheduler = CodeFusionCommitScheduler.from_config(pipe.scheduler.config)`. Its `step` reads the decoder's
    `logits` of the step's x0 estimate (or `logits_at`, which computes them only where they are read) and the
    `code_embeddings` matrix; it has no `eta` (every step draws fresh noise). The committed state is reset by
    `set_timesteps`.
    """

    commits_tokens = True
    # The committed state of the running sampling: which positions are committed, and the latest token and its
    # log-probability at every position. None until the first step after `set_timesteps`.
    committed_positions: torch.BoolTensor | None = None
    committed_tokens: torch.LongTensor | None = None
    committed_log_probs: torch.Tensor | None = None
    # Each row's own canvas length, `(batch_size,)`, which its schedule counts: set at the first step, it stays as
    # `select` cuts the committed tail off the canvas (the cut positions count as committed).
    canvas_lengths: torch.LongTensor | None = None

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
        min_timestep: int = 0,
    ) -> None:
        """As [`CodeFusionScheduler.set_timesteps`]; also starts a new sampling with nothing committed."""
        super().set_timesteps(num_inference_steps, device, timesteps, min_timestep)
        self.committed_positions = self.committed_tokens = self.committed_log_probs = self.canvas_lengths = None

    def select(self, keep: torch.BoolTensor, canvas_length: int) -> None:
        """Keep the committed state of the rows `keep` and of the first `canvas_length` positions, as the pipeline
        does when candidates finish early or the committed tail of the canvas is no longer computed."""
        if self.committed_positions is None:
            return
        self.committed_positions, self.committed_tokens, self.committed_log_probs = (
            state[keep, :canvas_length]
            for state in (self.committed_positions, self.committed_tokens, self.committed_log_probs)
        )
        self.canvas_lengths = self.canvas_lengths[keep]

    def commit_count(self, step_index: int, canvas_length: int | torch.LongTensor) -> int | torch.LongTensor:
        """How many positions of a canvas of `canvas_length` (an integer, or one per row) are committed after step
        `step_index`: mask-predict's linear schedule, `ceil(canvas_length * (step_index + 1) / n)`, all of them after
        the last step."""
        return -(-canvas_length * (step_index + 1) // len(self.timesteps))

    def denoiser_timesteps(self, timestep: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """`(batch_size, canvas_length)` timesteps: `timestep` at every position, 0 at the committed ones."""
        batch_size, canvas_length = sample.shape[:2]
        timesteps = torch.full((batch_size, canvas_length), int(timestep), device=sample.device)
        if self.committed_positions is None:
            return timesteps
        return timesteps.masked_fill(self.committed_positions, 0)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        *,
        logits: torch.Tensor | None = None,
        logits_at: Callable[[torch.BoolTensor], torch.Tensor] | None = None,
        code_embeddings: torch.Tensor,
        pred_original_sample: torch.Tensor | None = None,
        canvas_lengths: torch.LongTensor | None = None,
    ) -> CodeFusionCommitSchedulerOutput | tuple:
        """
        One committing step from the canvas `sample` at `timestep` (one of `self.timesteps`).

        Args:
            model_output: The denoiser's output for `sample` at `denoiser_timesteps(timestep, sample)`.
            timestep: The current timestep.
            sample: The canvas, `(batch_size, canvas_length, latent_dim)`.
            generator: Random generator(s) for the re-noising.
            return_dict: Return a [`CodeFusionCommitSchedulerOutput`] rather than a tuple.
            logits: The decoder's `(batch_size, canvas_length, vocab_size)` logits of this step's x0 estimate.
            logits_at: Instead of `logits`, a function from a `(batch_size, canvas_length)` mask to the logits at its
                positions, `(positions, vocab_size)`: called for the positions not committed before this step and
                for those it releases, the only ones whose tokens it reads (the vocabulary head is a large share of
                a step, and committed positions are most of the canvas by the end).
            code_embeddings: `(vocab_size, latent_dim)` code embeddings, to re-embed tokens.
            pred_original_sample: This step's x0 estimate as the sampler hands it on (rounded or not); the clipped
                estimate read from `model_output` when not given.
            canvas_lengths: At the first step after `set_timesteps`, each row's own canvas length, `(batch_size,)`,
                for rows on canvases of different lengths in one batch (the model masking the positions past them):
                each row's schedule counts its own positions, and nothing past them is read or committed. Default:
                the whole `sample`.
        """
        if (logits is None) == (logits_at is None):
            raise ValueError("Pass the decoder's logits either as `logits` or as `logits_at`, not both or neither.")
        if logits_at is None:

            def logits_at(positions: torch.BoolTensor) -> torch.Tensor:
                return logits[positions]

        step_index = self.index_for_timestep(timestep)
        batch_size, canvas_length = sample.shape[:2]
        device, dtype = sample.device, sample.dtype
        if pred_original_sample is None:
            model_timesteps = self.denoiser_timesteps(timestep, sample)
            pred_original_sample = self.estimate_original_sample(model_output, model_timesteps, sample)
        if self.committed_positions is None:
            self.committed_positions = torch.zeros(batch_size, canvas_length, dtype=torch.bool, device=device)
            self.committed_tokens = torch.zeros(batch_size, canvas_length, dtype=torch.long, device=device)
            self.committed_log_probs = torch.zeros(batch_size, canvas_length, device=device)
            self.canvas_lengths = torch.full((batch_size,), canvas_length, device=device)
            if canvas_lengths is not None:
                self.canvas_lengths = canvas_lengths.to(device).clamp(max=canvas_length)
        # Each row's positions still on the canvas; those cut off its end by `select` count as committed.
        on_canvas = self.canvas_lengths.clamp(max=canvas_length)
        in_row = torch.arange(canvas_length, device=device)[None, :] < on_canvas[:, None]
        # The decoder's tokens where nothing is committed; committed positions keep theirs.
        fresh = ~self.committed_positions & in_row
        step_log_probs = torch.zeros(batch_size, canvas_length, device=device)
        step_tokens = torch.zeros(batch_size, canvas_length, dtype=torch.long, device=device)
        step_log_probs[fresh], step_tokens[fresh] = most_likely_tokens(logits_at(fresh))
        tokens = torch.where(self.committed_positions, self.committed_tokens, step_tokens)
        token_log_probs = torch.where(self.committed_positions, self.committed_log_probs, step_log_probs)
        # The schedule is of each row's whole canvas: positions cut off its end count as committed.
        count = self.commit_count(step_index, self.canvas_lengths) - (self.canvas_lengths - on_canvas)
        count = torch.minimum(count.clamp(min=0), on_canvas)
        # Each row's `count` most likely positions on its canvas.
        order = token_log_probs.masked_fill(~in_row, -math.inf).argsort(dim=1, descending=True, stable=True)
        ranked = torch.arange(canvas_length, device=device)[None, :] < count[:, None]
        positions = torch.zeros_like(self.committed_positions).scatter(1, order, ranked)

        def noised(token_ids: torch.Tensor, noised_timestep: int) -> torch.Tensor:
            noise = randn_tensor(sample.shape, generator=generator, device=device, dtype=dtype)
            timesteps = torch.full((batch_size,), noised_timestep, device=device)
            return self.add_noise(code_embeddings[token_ids].to(dtype), noise, timesteps)

        released = self.committed_positions & ~positions  # re-noised from the decoder's new token there
        if released.any():
            step_tokens[released] = most_likely_tokens(logits_at(released))[1]
        prev_sample = noised(tokens, 0)
        prev_timestep = self.previous_timestep(timestep)
        if prev_timestep is not None:
            renoised = noised(step_tokens, int(prev_timestep))
            prev_sample = torch.where(positions[..., None], prev_sample, renoised)
        self.committed_positions, self.committed_tokens, self.committed_log_probs = positions, tokens, token_log_probs

        if not return_dict:
            return (prev_sample, pred_original_sample, tokens, token_log_probs)
        return CodeFusionCommitSchedulerOutput(
            prev_sample=prev_sample,
            pred_original_sample=pred_original_sample,
            token_ids=tokens,
            token_log_probs=token_log_probs,
            committed_positions=positions,
        )


__all__ = ["CodeFusionCommitScheduler", "CodeFusionCommitSchedulerOutput", "most_likely_tokens"]
