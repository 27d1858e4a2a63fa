"""What a CodeFusion pipeline call returns."""

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

from .retrieval_codefusion import Neighbour
from .sampling_options_codefusion import SamplingOptions


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
        settings: The [`SamplingOptions`] the call ran with, every choice it left to the pipeline made (the rounding,
            code length, length beam, strength and whether the scheduler commits tokens), e.g. to record with
            results.
        neighbors: With a retriever that the call used (a retrieval-augmented model, or `draft_candidates`): for
            each prompt, the corpus pairs retrieved for it, nearest first (the model reads the first
            `config.num_neighbors`, drafts start from the first `draft_candidates`); None otherwise.
    """

    code: list[list[str]] | torch.Tensor
    scores: list[list[float]]
    trajectory: list[dict] | None = None
    settings: SamplingOptions | None = None
    neighbors: list[list[Neighbour]] | None = None


__all__ = ["CodeFusionPipelineOutput"]
