"""Retrieval in a CodeFusion call: the retrieved pairs' code in the memory a retrieval-augmented model reads, and
candidates that start from retrieved code (retrieve-and-edit)."""

import torch

from .canvas_planning_codefusion import canvas_lengths
from .data_codefusion import pad_neighbors, tokenize_neighbors
from .ranking_codefusion import kept_lengths
from .retrieval_codefusion import Neighbour
from .sampling_options_codefusion import SamplingOptions
from .sampling_state_codefusion import SamplingPlan


class CodeFusionRetrievalMixin:
    """The pipeline's use of its optional `retriever` (mixed into [`CodeFusionPipeline`], as diffusers mixes its
    loaders in): `pipe.retriever = None` samples without retrieval."""

    def retrieve_neighbours(self, prompts: list[str] | None, options: SamplingOptions) -> list[list[Neighbour]] | None:
        """Each prompt's nearest corpus pairs, retrieved once for both uses of a call: as many as a
        retrieval-augmented model reads (`config.num_neighbors`) or as the call starts candidates from
        (`draft_candidates`), whichever is more; None when neither applies."""
        reads = self.model.config.num_neighbors if self.retriever is not None else 0
        if options.draft_candidates and (self.retriever is None or prompts is None):
            raise ValueError(
                f"draft_candidates={options.draft_candidates} starts candidates from retrieved code: give the "
                "pipeline a retriever (pipe.retriever = CodeFusionRetriever.from_dataset(...)) and pass prompt, not "
                "prompt_embeds."
            )
        if reads and prompts is None:
            raise ValueError(
                "This pipeline retrieves neighbours by the prompts' text: pass prompt instead of prompt_embeds, or "
                "set pipe.retriever = None to sample without neighbours."
            )
        k = min(max(reads, options.draft_candidates), self.retriever.num_rows) if self.retriever is not None else 0
        return self.retriever.retrieve(prompts, k, pipeline=self) if k else None

    def retrieval_memory(
        self, found: list[list[Neighbour]] | None, encoder_hidden_states: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For a retrieval-augmented model (`config.num_neighbors`) with a `retriever`: the prompts' encoding with
        the code of their nearest corpus pairs (the first of `found`) appended ([`~CodeFusionModel.add_neighbors`]);
        the encoding as it is otherwise (`pipe.retriever = None` samples without neighbours)."""
        config = self.model.config
        if not config.num_neighbors or self.retriever is None:
            return encoder_hidden_states, attention_mask
        nearest = [pairs[: config.num_neighbors] for pairs in found]
        code_ids = tokenize_neighbors(nearest, self.tokenizer, config.max_code_length)
        neighbors = pad_neighbors(code_ids, config.pad_token_id)
        device = encoder_hidden_states.device
        return self.model.add_neighbors(
            encoder_hidden_states, attention_mask, *(tensor.to(device) for tensor in neighbors.values())
        )

    def start_from_drafts(
        self,
        found: list[list[Neighbour]] | None,
        plan: SamplingPlan,
        latents: torch.Tensor,
        row_canvases: torch.LongTensor,
    ) -> tuple[torch.Tensor, torch.LongTensor, torch.BoolTensor]:
        """With `draft_candidates`: the last that many candidates of each prompt start from its nearest corpus pairs'
        code (the first of `found`, the nearest first), embedded and noised to the first of `plan.draft_schedule`
        with the candidates' own noise, each on a canvas of its draft's length plus the trained margin on a predicted
        canvas. Returns the starting canvas, the canvases and which candidates start from drafts."""
        k, drafted = plan.options.num_return_sequences, plan.options.draft_candidates
        is_draft = (torch.arange(len(latents), device=latents.device) % k) >= k - drafted
        if not drafted:
            return latents, row_canvases, is_draft
        nearest = [pairs[:drafted] for pairs in found]
        drafts = [pairs[j % len(pairs)].code for pairs in nearest for j in range(drafted)]
        draft_ids = self.code_to_ids(drafts).to(latents.device)
        clean = self.model.embed_code(draft_ids).to(latents.dtype)
        first = torch.tensor(plan.draft_schedule[:1], device=latents.device)
        latents = latents.clone()
        latents[is_draft] = self.scheduler.add_noise(clean, latents[is_draft], first)
        if plan.options.code_length == "predicted":
            lengths = kept_lengths(draft_ids, self.stop_token_ids).clamp(min=1)
            config = self.model.config
            row_canvases = row_canvases.clone()
            row_canvases[is_draft] = canvas_lengths(lengths, config.canvas_margin, config.max_code_length)
        return latents, row_canvases, is_draft
