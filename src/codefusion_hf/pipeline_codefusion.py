"""Text-to-code generation with CodeFusion: prompt in, ranked code candidates out."""

from collections.abc import Callable, Sequence

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedTokenizerBase

from .canvas_planning_codefusion import canvas_groups, canvas_lengths, predicted_code_lengths
from .constants import DECODER_ROUNDINGS
from .hub_codefusion import CodeFusionPipelineHubMixin
from .modeling_codefusion import CodeFusionModel, CodeFusionPromptCache
from .pipeline_output_codefusion import CodeFusionPipelineOutput
from .pipeline_retrieval_codefusion import CodeFusionRetrievalMixin
from .ranking_codefusion import kept_lengths, rank_candidates, ranked_groups, ranking_scores
from .retrieval_codefusion import CodeFusionRetriever
from .sampling_options_codefusion import SamplingOptions, check_inputs, settled_margin_argument, trajectory_steps
from .sampling_state_codefusion import CandidateResults, DenoisingRows, SamplingPlan, settled_rows
from .scheduling_codefusion import CodeFusionScheduler
from .scheduling_codefusion_commit import most_likely_tokens
from .tokenization_codefusion import check_code_tokenizer

logger = logging.get_logger(__name__)


class CodeFusionPipeline(CodeFusionPipelineHubMixin, CodeFusionRetrievalMixin, DiffusionPipeline):
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
        retriever ([`CodeFusionRetriever`], *optional*): The prompt/code pairs nearest a prompt, saved and loaded with
            the pipeline; `pipe.retriever = None` leaves it out.
    """

    model_cpu_offload_seq = "model"
    _optional_components = ["prompt_tokenizer", "retriever"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        model: CodeFusionModel,
        scheduler: CodeFusionScheduler,
        tokenizer: PreTrainedTokenizerBase,
        prompt_tokenizer: PreTrainedTokenizerBase | None = None,
        retriever: CodeFusionRetriever | None = None,
    ):
        super().__init__()
        config = model.config
        check_code_tokenizer(tokenizer, config)
        encoder_vocab_size = config.encoder_config.vocab_size
        if prompt_tokenizer is not None and len(prompt_tokenizer) > encoder_vocab_size:
            raise ValueError(
                f"prompt_tokenizer has {len(prompt_tokenizer)} tokens but the encoder's vocabulary has only "
                f"{encoder_vocab_size}: use the encoder's own tokenizer."
            )
        scheduler.check_same_schedule(model.noise_scheduler)
        self.register_modules(
            model=model,
            scheduler=scheduler,
            tokenizer=tokenizer,
            prompt_tokenizer=prompt_tokenizer,
            retriever=retriever,
        )

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the running call; a step callback may change it (`pipe._guidance_scale`) for the
        steps after it, e.g. 1 to stop guiding."""
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        """The number of steps of the running call, so that a step callback knows which is the last."""
        return self._num_timesteps

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

    def prompt_states(
        self,
        prompts: list[str] | None,
        prompt_embeds: torch.Tensor | None,
        prompt_attention_mask: torch.Tensor | None,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder states and attention mask of the call's prompts, encoded or given as `prompt_embeds`."""
        if prompts is not None:
            return self.encode_prompt(prompts, device)
        attention_mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=device)
        if prompt_attention_mask is not None:
            attention_mask = prompt_attention_mask.to(device=device, dtype=torch.long)
        return prompt_embeds.to(device=device, dtype=self.model.dtype), attention_mask

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

    def plan_sampling(
        self,
        options: SamplingOptions,
        refining: bool,
        return_trajectory: bool | Sequence[int] = False,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> SamplingPlan:
        """What every step reads, checked before anything runs. The timesteps: the custom ones, else
        `num_inference_steps` placed where the model was trained; when `refining` code, the last `strength` of them,
        as diffusers' img2img pipelines run the end of the schedule."""
        schedule = self.scheduler.timestep_schedule(
            None if options.timesteps is not None else options.num_inference_steps,
            options.timesteps,
            min_timestep=0 if options.timesteps is not None else self.model.config.min_train_timestep,
        ).tolist()
        if refining:
            schedule = schedule[-max(1, round(len(schedule) * options.strength)) :]
        draft_schedule = None
        if options.draft_candidates:
            draft_schedule = schedule[-max(1, round(len(schedule) * options.strength)) :]
        reads_embeddings = self.scheduler.commits_tokens or options.rounding == "nearest"
        return SamplingPlan(
            options=options,
            schedule=schedule,
            record_steps=trajectory_steps(return_trajectory, len(schedule)),
            code_embeddings=self.model.code_embedding_matrix() if reads_embeddings else None,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            draft_schedule=draft_schedule,
        )

    def plan_canvases(
        self, options: SamplingOptions, encoder_hidden_states: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.LongTensor:
        """Each candidate's canvas length, `(num_prompts * num_return_sequences,)`: room for its code length (the
        given one, or one of the length head's `length_beam` likeliest) plus the pad positions the model saw after
        the code in training; the whole canvas for `code_length="full"`."""
        config, k = self.model.config, options.num_return_sequences
        num_rows, device = len(encoder_hidden_states) * k, encoder_hidden_states.device
        if options.code_length == "full":
            return torch.full((num_rows,), config.max_code_length, device=device)
        if options.code_length == "predicted":
            logits = self.model.length_logits(encoder_hidden_states, attention_mask)
            code_lengths = predicted_code_lengths(logits, k, options.length_beam)
        else:
            code_lengths = torch.full((num_rows,), options.code_length, device=device)
        return canvas_lengths(code_lengths, config.canvas_margin, config.max_code_length)

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
        unconditional_states, unconditional_mask = self.model.unconditional_prompt(
            unconditional_states, attention_mask
        )
        output = self.model.denoise(
            torch.cat([latents, latents]),
            timesteps if timesteps.ndim == 0 else torch.cat([timesteps, timesteps]),
            torch.cat([encoder_hidden_states, unconditional_states]),
            torch.cat([attention_mask, unconditional_mask]),
            None if self_condition is None else torch.cat([self_condition, self_condition]),
            cache,
            None if code_attention_mask is None else torch.cat([code_attention_mask, code_attention_mask]),
        )
        conditional, unconditional = output.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def denoise_step(self, rows: DenoisingRows, timestep: torch.Tensor, plan: SamplingPlan) -> BaseOutput:
        """One step of the rows: the (guided) denoiser, its x0 estimate, the decoder where the scheduler or the
        rounding reads it, and the scheduler's step, whose canvas the rows move to."""
        options, code_embeddings = plan.options, plan.code_embeddings
        if self.guidance_scale > 1:  # on from the start, or turned on by a callback
            rows.prepare_guidance(self.model.cache_prompt)
        denoiser_timesteps = self.scheduler.denoiser_timesteps(timestep, rows.latents)
        model_timesteps = denoiser_timesteps
        if options.condition_enhanced_timestep is not None:
            told = timestep.new_tensor(options.condition_enhanced_timestep)
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
            rows.code_attention_mask,
        )
        estimate = self.scheduler.estimate_original_sample(model_output, denoiser_timesteps, rows.latents)
        commits, logits = self.scheduler.commits_tokens, None
        step_kwargs = {"code_embeddings": code_embeddings, "canvas_lengths": rows.canvas_lengths} if commits else {}
        decoder_inputs = (rows.encoder_hidden_states, rows.attention_mask, rows.prompt_cache, rows.code_attention_mask)
        if options.rounding in DECODER_ROUNDINGS:  # every position's logits: one decoder pass serves both
            logits = self.model.decode(estimate, *decoder_inputs)
            if commits:
                step_kwargs["logits"] = logits
        elif commits:  # the head runs only where the scheduler reads tokens
            states = self.model.decoder_states(estimate, *decoder_inputs)
            step_kwargs["logits_at"] = lambda positions: self.model.lm_head(states[positions])
        if not commits:
            step_kwargs["eta"] = options.eta
        if not commits or self.model.config.self_condition:  # else nothing reads the rounded estimate
            estimate = self.model.round_estimate(
                estimate, options.rounding, logits=logits, code_embeddings=code_embeddings
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
        if self.model.config.self_condition:
            rows.self_condition = step.pred_original_sample
        return step

    def read_tokens(
        self, step: BaseOutput, canvas: torch.Tensor, rows: DenoisingRows
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The token ids of a step and their log-probabilities: those a committing scheduler holds, else the decoder's
        most likely token at every position of `canvas` (the rows' canvas or x0 estimate); pad, of log-probability 0,
        past each row's own canvas."""
        if self.scheduler.commits_tokens:
            token_ids, token_log_probs = step.token_ids, step.token_log_probs
        else:
            logits = self.model.decode(
                canvas, rows.encoder_hidden_states, rows.attention_mask, rows.prompt_cache, rows.code_attention_mask
            )
            token_log_probs, token_ids = most_likely_tokens(logits)
        past = rows.past_canvas
        return token_ids.masked_fill(past, self.model.config.pad_token_id), token_log_probs.masked_fill(past, 0.0)

    def denoise_group(
        self, rows: DenoisingRows, plan: SamplingPlan, results: CandidateResults, schedule: list[int]
    ) -> None:
        """Sample one batch of candidates through `schedule` (the plan's, or the end of it that drafts run: its
        steps are numbered as in the plan's), a new sampling of the scheduler, into `results`."""
        self._guidance_scale = plan.options.guidance_scale  # a callback's change lasts for its own group
        self.scheduler.set_timesteps(device=rows.latents.device, timesteps=schedule)
        group, callback, skipped = rows.indices, plan.callback_on_step_end, len(plan.schedule) - len(schedule)
        for step_index, timestep in enumerate(self.progress_bar(self.scheduler.timesteps), start=skipped):
            step = self.denoise_step(rows, timestep, plan)
            shrinks = plan.shrinks and step_index + 1 < len(plan.schedule)  # not after the last step
            if step_index in plan.record_steps or shrinks:
                results.update(rows, *self.read_tokens(step, step.pred_original_sample, rows))
            if step_index in plan.record_steps:
                results.snapshot(step_index, group)
            if callback is not None:
                callback_kwargs = {
                    name: {"latents": rows.latents}[name] for name in plan.callback_on_step_end_tensor_inputs
                }
                rows.latents = (callback(self, step_index, int(timestep), callback_kwargs) or {}).pop(
                    "latents", rows.latents
                )
            if shrinks:
                rows = settled_rows(rows, step, results, plan.options, self.scheduler, self.stop_token_ids)
                if len(rows.indices) == 0:
                    break
        if len(rows.indices):  # a committing scheduler's text is its committed tokens (a callback changes the canvas)
            results.finish(rows, *self.read_tokens(step, rows.latents, rows))
        results.snapshot_finished(group, step_index)

    @property
    def stop_token_ids(self) -> tuple[int, int]:
        """The tokens that end a candidate's code: pad and eos."""
        return self.model.config.pad_token_id, self.model.config.eos_token_id

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

    def ids_to_text(
        self, token_ids: torch.Tensor, lengths: torch.Tensor | None = None, max_length: int | None = None
    ) -> list[str]:
        """The code of each row of `token_ids`: its first `lengths` tokens (up to the first pad or eos by default),
        at most `max_length`."""
        if lengths is None:
            lengths = kept_lengths(token_ids, self.stop_token_ids)
        limit = max_length or token_ids.shape[1]
        return self.tokenizer.batch_decode(
            [ids[: min(int(length), limit)] for ids, length in zip(token_ids.tolist(), lengths)],
            skip_special_tokens=True,
            clean_up_tokenization_spaces=False,
        )

    def ranked_output(
        self,
        results: CandidateResults,
        canvas_lengths: torch.LongTensor,
        options: SamplingOptions,
        trajectory: list[dict],
        output_type: str,
        max_length: int | None,
    ) -> tuple[list[list[str]] | torch.Tensor, list[list[float]], list[dict]]:
        """Each prompt's candidates best first by their `options.ranking` score, as `output_type` asks; their
        scores; and the trajectory's code in the same order."""
        num_return_sequences = options.num_return_sequences
        lengths = kept_lengths(results.token_ids, self.stop_token_ids)
        scores = ranking_scores(
            results.token_ids,
            results.log_probs,
            lengths,
            ranking=options.ranking,
            num_return_sequences=num_return_sequences,
            vocab_size=self.model.config.vocab_size,
            canvas_lengths=canvas_lengths,
        )
        order, ranked_scores = rank_candidates(scores, num_return_sequences)
        if output_type == "text":
            code = ranked_groups(self.ids_to_text(results.token_ids, lengths, max_length), order, num_return_sequences)
        elif output_type == "pt":
            token_ids = results.token_ids[order]
            code = token_ids.view(-1, num_return_sequences, token_ids.shape[1])[..., :max_length]
        else:
            code = results.latents[order].view(-1, num_return_sequences, *results.latents.shape[1:])
        for entry in trajectory:
            entry["code"] = ranked_groups(entry["code"], order, num_return_sequences)
        return code, ranked_scores, trajectory

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
        settled_margin: int | None = None,
        ranking: str = "log_prob",
        init_code: str | list[str] | list[list[str]] | None = None,
        strength: float | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        condition_enhanced_timestep: int | None = None,
        code_length: int | str | None = None,
        length_beam: int | None = None,
        draft_candidates: int = 0,
        canvas_margin: int | None = None,
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
                it may return a replacement `"latents"`, read `pipe.num_timesteps` and set `pipe._guidance_scale`
                for the steps after it. Its `latents` are those of one batch of candidates on similar canvases
                (`canvas_groups`: the steps and the callback run once per batch, each starting at the call's
                `guidance_scale`), on its longest canvas (meaningless past a row's own canvas; the returned ones
                are pad), without the candidates and positions `stop_when_stable` and `settled_margin` dropped.
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
            settled_margin: With [`CodeFusionCommitScheduler`]: stop computing the tail of the canvas once every
                candidate has committed pad (or eos) there, keeping this many settled positions after the last
                unsettled one (a model trained with the trainer's `canvas_margin` saw that many pads after the
                code). None (default): the whole canvas at every step. (`canvas_margin`, its old name, is deprecated.)
            ranking: How each prompt's candidates are ordered: `"log_prob"` (default), `"length_normalized"` or
                `"consensus"` (see [`~ranking_codefusion.ranking_scores`]).
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
            draft_candidates: With a `retriever`, this many of each prompt's candidates (its last ones) start from its
                nearest corpus pairs' code instead of from noise, noised to `strength` of the schedule as `init_code`
                is, and are ranked with the others (retrieve-and-edit; a model trained with
                `config.draft_probability` learned to edit such drafts). 0 (default): none.

        Returns:
            [`CodeFusionPipelineOutput`] (with the resolved `settings`), or a tuple `(code, scores, trajectory)` when
            `return_dict=False`.
        """
        # 1. Check the inputs and plan the steps, before anything runs
        config = self.model.config
        options = SamplingOptions(
            num_inference_steps=num_inference_steps,
            num_return_sequences=num_return_sequences,
            timesteps=timesteps,
            eta=eta,
            rounding=rounding,
            guidance_scale=guidance_scale,
            stop_when_stable=stop_when_stable,
            settled_margin=settled_margin_argument(settled_margin, canvas_margin),
            ranking=ranking,
            strength=strength,
            condition_enhanced_timestep=condition_enhanced_timestep,
            code_length=code_length,
            length_beam=length_beam,
            draft_candidates=draft_candidates,
        )
        prompts, drafts, options = check_inputs(
            options,
            config=config,
            scheduler=self.scheduler,
            prompt=prompt,
            prompt_embeds=prompt_embeds,
            prompt_attention_mask=prompt_attention_mask,
            output_type=output_type,
            max_length=max_length,
            latents=latents,
            generator=generator,
            init_code=init_code,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            callback_tensor_inputs=self._callback_tensor_inputs,
        )
        plan = self.plan_sampling(
            options, drafts is not None, return_trajectory, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        self._guidance_scale, self._num_timesteps = guidance_scale, len(plan.schedule)
        device, was_training = self._execution_device, self.model.training
        self.model.eval()  # no dropout while sampling; the previous mode is restored below, also after an error
        try:
            # 2. Encode the prompts, and plan each candidate's canvas
            states, mask = self.prompt_states(prompts, prompt_embeds, prompt_attention_mask, device)
            row_canvases = self.plan_canvases(options, states, mask)
            found = self.retrieve_neighbours(prompts, options)
            states, mask = self.retrieval_memory(found, states, mask)
            states = states.repeat_interleave(num_return_sequences, dim=0)
            mask = mask.repeat_interleave(num_return_sequences, dim=0)

            # 3. The starting canvas: noise of the whole canvas (a shorter canvas takes its first positions), with the
            # drafts' embeddings noised to the first step
            latents = self.prepare_latents(len(row_canvases), states.dtype, device, generator, latents)
            if drafts is not None:
                clean = self.model.embed_code(self.code_to_ids(drafts).to(device)).to(states.dtype)
                latents = self.scheduler.add_noise(clean, latents, torch.tensor(plan.schedule[:1], device=device))
            latents, row_canvases, is_draft = self.start_from_drafts(found, plan, latents, row_canvases)
            results = CandidateResults.start(latents, int(row_canvases.max()), config.pad_token_id, plan.record_steps)

            # 4. Denoise: candidates of similar canvas lengths share a batch, the model masking the positions past each
            # row's own canvas, so each is computed as on that canvas alone, where it was trained; canvases too
            # different for that padding to pay are denoised apart
            for starts_from_draft, schedule in ((False, plan.schedule), (True, plan.draft_schedule)):
                candidates = (is_draft == starts_from_draft).nonzero().flatten()
                for group in canvas_groups(row_canvases[candidates]) if len(candidates) else []:
                    rows = DenoisingRows.of_group(
                        candidates[group], row_canvases, latents, states, mask, generator, self.model.cache_prompt
                    )
                    self.denoise_group(rows, plan, results, schedule)

            # 5. Score each candidate
            results.finish_call(row_canvases, self.model.embed_code(torch.tensor(config.pad_token_id, device=device)))
            trajectory = results.trajectory(plan.schedule, lambda ids: self.ids_to_text(ids, max_length=max_length))
        finally:
            self.model.train(was_training)

        # 6. Rank each prompt's candidates, best first, and post-process
        code, ranked_scores, trajectory = self.ranked_output(
            results, row_canvases, options, trajectory, output_type, max_length
        )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (code, ranked_scores, trajectory or None)
        return CodeFusionPipelineOutput(
            code=code, scores=ranked_scores, trajectory=trajectory or None, settings=options, neighbors=found
        )


__all__ = ["CodeFusionPipeline", "CodeFusionPipelineOutput"]
