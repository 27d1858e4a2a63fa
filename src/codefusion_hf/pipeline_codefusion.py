"""Text-to-code generation with CodeFusion: prompt in, ranked code candidates out."""

import json
import math
import numbers
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx2  # huggingface_hub's HTTP client: its transport errors mean the Hub endpoint could not be reached
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import CommitInfo, constants, create_repo, hf_hub_download, snapshot_download, upload_folder
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from safetensors import safe_open
from transformers import PreTrainedTokenizerBase

from .configuration_codefusion import DECODER_ROUNDINGS
from .modelcard_codefusion import create_model_card, save_model_card
from .modeling_codefusion import CodeFusionModel
from .scheduling_codefusion import CodeFusionScheduler

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("text", "pt", "latent")
ROUNDINGS = ("none", "nearest", *DECODER_ROUNDINGS)
# Files each saved component cannot load without; checked before loading so errors name the file.
REQUIRED_FILES = {
    "model": ("config.json", ("model.safetensors", "model.safetensors.index.json")),
    "scheduler": ("scheduler_config.json",),
    "tokenizer": ("tokenizer_config.json", "tokenizer.json"),
    "prompt_tokenizer": ("tokenizer_config.json", "tokenizer.json"),
}


@dataclass
class CodeFusionPipelineOutput(BaseOutput):
    """
    Args:
        code: For each prompt, its `num_return_sequences` candidates, best first: strings for `output_type="text"`;
            a `(num_prompts, k, canvas_length)` tensor of token ids for `"pt"`; the final latents for `"latent"`.
        scores: For each prompt, the ranking score of each candidate: the decoder's mean token log-probability of
            the kept tokens and the pad/eos that ends them. It never looks at a reference.
        trajectory: When asked, one entry per recorded step: `{"step", "timestep", "code"}`, where `code` is the
            decoded x0 estimate of every candidate at that step, in the same (ranked) order as `code`.
    """

    code: list[list[str]] | torch.Tensor
    scores: list[list[float]]
    trajectory: list[dict] | None = None


@dataclass
class CommittedTokens:
    """The state of `commit_tokens` sampling: which canvas positions are committed, and the latest token and its
    log-probability at every position (kept while the position stays committed)."""

    positions: torch.Tensor
    tokens: torch.Tensor
    log_probs: torch.Tensor


class CodeFusionPipeline(DiffusionPipeline):
    r"""
    Generates code from natural language with a [`CodeFusionModel`]: the prompt is encoded once, `k` Gaussian
    canvases per prompt are denoised together by the [`CodeFusionScheduler`], and the decoder reads tokens off the
    final canvas (cut at the first pad or eos). Candidates are ranked by the decoder's mean token log-probability.

    Args:
        model ([`CodeFusionModel`]): Encoder, denoiser and decoder.
        scheduler ([`CodeFusionScheduler`]): Sampler; its noise schedule must be the one the model was trained with.
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
        self.register_modules(model=model, scheduler=scheduler, tokenizer=tokenizer, prompt_tokenizer=prompt_tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "CodeFusionPipeline":
        """Load from a local folder or a Hub repo id (`revision=`, `token=`, `cache_dir=` are passed to the download).

        A repo id is downloaded with `huggingface_hub.snapshot_download` first: diffusers cannot resolve a custom
        pipeline class by repo id. Missing or unreadable files raise an `OSError` naming the file (and the repo id
        and revision, for a download: the snapshot folder alone does not say which repo it came from).
        """
        path = str(pretrained_model_name_or_path)
        if os.path.isdir(path):
            check_pipeline_folder(path)
            return super().from_pretrained(path, **kwargs)
        if path.startswith((".", "/", "~")) or path.count("/") > 1:
            raise OSError(f"{path} is not a folder, nor a Hub repo id (which looks like 'user/name').")
        download_kwargs = {key: kwargs.pop(key) for key in ("revision", "token", "cache_dir") if key in kwargs}
        try:
            folder = snapshot_download(path, **download_kwargs)
        except LocalEntryNotFoundError as error:  # offline, or the Hub unreachable, and not in the cache
            raise OSError(f"{path} is not a local folder, and as a Hub repo id it could not be downloaded: {error}")
        try:
            check_pipeline_folder(folder)
        except OSError as error:
            revision = download_kwargs.get("revision") or "main"
            raise OSError(
                f"Hub repo {path!r} (revision {revision!r}) is not a usable CodeFusion pipeline: {error}"
            ) from None
        return super().from_pretrained(folder, **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        model_card: bool | dict[str, Any] = True,
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        """Save the pipeline and a model card, README.md, whose usage snippet loads `save_directory`.

        Args:
            model_card: `True` for a card made from the pipeline alone; a dict of
                [`~codefusion_hf.modelcard_codefusion.create_model_card`] fields (`base_model`, `datasets`,
                `training_summary`, `eval_results_file`, `language`, `repo_id`, ...) to add what it cannot know;
                `False` for none. A README.md already in the folder that a person wrote (no "generated" note) is
                kept; generated ones are replaced, so the card follows the weights.
            push_to_hub: Push through [`push_to_hub`] afterwards (`repo_id`, `commit_message`, `private`, `token`
                and `create_pr` go there); diffusers' own push would replace the card with its generic one.
            kwargs: Passed to diffusers' `save_pretrained` (`safe_serialization`, `variant`, ...).
        """
        push_names = ("repo_id", "commit_message", "private", "token", "create_pr")
        push_kwargs = {name: kwargs.pop(name) for name in push_names if name in kwargs}
        # Built first: bad card input (a missing eval file) fails before anything is written.
        card = None if model_card is False else create_model_card(self, **card_fields(model_card, save_directory))
        super().save_pretrained(save_directory, **kwargs)
        if card is not None and not save_model_card(card, save_directory):
            logger.warning(f"Kept the README.md in {save_directory} (or the repo's): a person wrote it.")
        if push_to_hub:
            repo_id = push_kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            save_kwargs = {name: kwargs[name] for name in ("safe_serialization", "variant") if name in kwargs}
            self.push_to_hub(repo_id, model_card=model_card, **push_kwargs, **save_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        subfolder: str | None = None,
        *,
        model_card: bool | dict[str, Any] = True,
    ) -> CommitInfo:
        """Upload the pipeline with its model card (see [`save_pretrained`]), whose snippet loads `repo_id`.

        As with diffusers, a README.md already in the repo that a person wrote is kept; a generated one is replaced.
        """
        with reaching_the_hub(repo_id), tempfile.TemporaryDirectory() as folder:
            repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
            if subfolder:
                model_card = False  # as diffusers: a pipeline pushed into a subfolder is not the repo's model
            if model_card is not False:
                model_card = card_fields(model_card, repo_id)
                try:  # the repo's current card: save_pretrained keeps it if a person wrote it
                    readme = hf_hub_download(repo_id, "README.md", token=token)
                    shutil.copyfile(readme, os.path.join(folder, "README.md"))
                except EntryNotFoundError:
                    pass
            self.save_pretrained(folder, model_card=model_card, safe_serialization=safe_serialization, variant=variant)
            return self._upload_folder(
                folder, repo_id, token=token, commit_message=commit_message, create_pr=create_pr, subfolder=subfolder
            )

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
        commit_tokens: bool = False,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
    ) -> list[str]:
        # Any sequence of strings works, e.g. a `datasets` column.
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, Iterable) else prompt
        if not isinstance(prompts, list) or len(prompts) == 0:
            raise ValueError(f"prompt must be a non-empty string or a non-empty list of strings, got {prompt!r}.")
        for index, text in enumerate(prompts):
            if not isinstance(text, str):
                raise ValueError(f"prompt[{index}] must be a string, got {type(text).__name__}.")
            if not text.strip():
                raise ValueError(f"prompt[{index}] is empty: describe the code to generate.")
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        if timesteps is None and (
            not is_integer(num_inference_steps) or not 1 <= num_inference_steps <= num_train_timesteps
        ):
            raise ValueError(
                f"num_inference_steps must be an integer from 1 to {num_train_timesteps}, got {num_inference_steps!r}."
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
        if commit_tokens and rounding not in (None, "decoder"):
            raise ValueError(
                f"commit_tokens re-embeds the decoder's most likely tokens at every step (rounding='decoder'); it "
                f"cannot be combined with rounding={rounding!r}."
            )
        if not is_finite_number(eta) or eta < 0:
            raise ValueError(f"eta must be a finite number >= 0 (0 is DDIM, 1 ancestral sampling), got {eta!r}.")
        if commit_tokens and eta != 0:
            raise ValueError(f"commit_tokens re-noises with fresh noise at every step; eta must stay 0, got {eta}.")
        if not is_finite_number(guidance_scale) or guidance_scale < 1:
            raise ValueError(
                f"guidance_scale must be a finite number >= 1 (1 turns guidance off), got {guidance_scale!r}."
            )
        expected_shape = (len(prompts) * num_return_sequences, canvas, config.latent_dim)
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
        return prompts

    def encode_prompt(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize and encode the prompts once; returns the encoder states and the prompt attention mask."""
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

    def decode_canvas(
        self, latents: torch.Tensor, encoder_hidden_states: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Read tokens off a denoised canvas: returns token ids, the kept length of each row (up to the first pad
        or eos) and each row's score (see `score_tokens`)."""
        log_probs = self.model.decode(latents, encoder_hidden_states, attention_mask).float().log_softmax(dim=-1)
        token_log_probs, token_ids = log_probs.max(dim=-1)
        return self.score_tokens(token_ids, token_log_probs)

    def score_tokens(
        self, token_ids: torch.Tensor, token_log_probs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, the kept length of each row (up to the first pad or eos) and each row's score: the mean
        log-probability of the kept tokens and the token that ends them."""
        config = self.model.config
        is_stop = (token_ids == config.pad_token_id) | (token_ids == config.eos_token_id)
        canvas = token_ids.shape[1]
        positions = torch.arange(canvas, device=token_ids.device)
        lengths = torch.where(is_stop, positions, canvas).min(dim=1).values
        scored = positions[None, :] <= lengths[:, None]
        scores = (token_log_probs * scored).sum(dim=1) / scored.sum(dim=1)
        return token_ids, lengths, scores

    def resolve_rounding(self, rounding: str | None, commit_tokens: bool = False) -> str:
        """The rounding a call uses: "decoder" with `commit_tokens`, else the one asked for, else the one the model
        was trained for, else "none"."""
        if commit_tokens:
            return "decoder"
        return rounding or self.model.config.self_condition_rounding or "none"

    def decoder_rounded_estimate(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        rounding: str | None,
    ) -> torch.Tensor | None:
        """The step's clipped x0 estimate rounded through the decoder, for `rounding` "decoder" or "decoder_mean";
        None otherwise (the scheduler then reads x0 from `model_output` itself, snapping it for "nearest")."""
        if rounding not in DECODER_ROUNDINGS:
            return None
        estimate = self.scheduler.clip_original_sample(
            self.scheduler.predict_original_sample(model_output, timestep, latents)
        )
        return self.model.round_with_decoder(estimate, encoder_hidden_states, attention_mask, rounding)

    def guided_denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        self_condition: torch.Tensor | None,
        guidance_scale: float = 1.0,
        unconditional_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoiser's output; with `guidance_scale > 1`, classifier-free guidance (Ho & Salimans, 2022): the
        conditional and the unconditional outputs come from one batch of twice the rows, and the result is
        `unconditional + guidance_scale * (conditional - unconditional)`. The unconditional rows read
        `unconditional_states` (Gaussian noise, the prompt encoding of unconditional training) over an unmasked
        prompt, as the model saw them in training."""
        if guidance_scale == 1:
            return self.model.denoise(latents, timesteps, encoder_hidden_states, attention_mask, self_condition)
        output = self.model.denoise(
            torch.cat([latents, latents]),
            timesteps if timesteps.ndim == 0 else torch.cat([timesteps, timesteps]),
            torch.cat([encoder_hidden_states, unconditional_states]),
            torch.cat([attention_mask, torch.ones_like(attention_mask)]),
            None if self_condition is None else torch.cat([self_condition, self_condition]),
        )
        conditional, unconditional = output.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def commit_count(self, step_index: int, canvas_length: int) -> int:
        """How many positions `commit_tokens` sampling commits after step `step_index`: mask-predict's linear
        schedule, all of them after the last step."""
        return math.ceil(canvas_length * (step_index + 1) / len(self.scheduler.timesteps))

    def commit_tokens_step(
        self,
        latents: torch.Tensor,
        committed: CommittedTokens | None,
        step_index: int,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        self_condition: torch.Tensor | None,
        generator: torch.Generator | list[torch.Generator] | None,
        guidance_scale: float = 1.0,
        unconditional_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, CommittedTokens]:
        """One step of `commit_tokens` sampling, mask-predict's schedule (Ghazvininejad et al., 2019) on the
        continuous canvas. The denoiser reads the canvas, whose committed positions are at t = 0; the decoder's
        tokens and log-probabilities replace those of the uncommitted positions; the `commit_count` positions with
        the highest log-probabilities are committed (positions committed before may be released); the next canvas
        holds the committed tokens' embeddings at t = 0 and, elsewhere, the decoder's tokens re-noised with fresh
        noise to the next timestep. With `guidance_scale > 1` the denoiser is guided (`guided_denoise`). Returns the
        next canvas, this step's x0 estimate for self-conditioning (rounded as the model was trained,
        `config.self_condition_rounding`) and the new state."""
        batch_size, canvas_length = latents.shape[:2]
        device, dtype = latents.device, latents.dtype
        if committed is None:
            committed = CommittedTokens(
                positions=torch.zeros(batch_size, canvas_length, dtype=torch.bool, device=device),
                tokens=torch.zeros(batch_size, canvas_length, dtype=torch.long, device=device),
                log_probs=torch.zeros(batch_size, canvas_length, device=device),
            )
        timesteps = self.scheduler.timesteps
        position_timesteps = torch.full((batch_size, canvas_length), int(timesteps[step_index]), device=device)
        position_timesteps = position_timesteps.masked_fill(committed.positions, 0)
        model_output = self.guided_denoise(
            latents,
            position_timesteps,
            encoder_hidden_states,
            attention_mask,
            self_condition,
            guidance_scale,
            unconditional_states,
        )
        estimate = self.scheduler.clip_original_sample(
            self.scheduler.predict_original_sample(model_output, position_timesteps, latents)
        )
        logits = self.model.decode(estimate, encoder_hidden_states, attention_mask)
        step_log_probs, step_tokens = logits.float().log_softmax(dim=-1).max(dim=-1)
        tokens = torch.where(committed.positions, committed.tokens, step_tokens)
        token_log_probs = torch.where(committed.positions, committed.log_probs, step_log_probs)
        count = self.commit_count(step_index, canvas_length)
        positions = torch.zeros_like(committed.positions).scatter(1, token_log_probs.topk(count, dim=1).indices, True)

        def noised(token_ids: torch.Tensor, timestep: int) -> torch.Tensor:
            noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=dtype)
            step = torch.full((batch_size,), timestep, device=device)
            return self.scheduler.add_noise(self.model.embed_code(token_ids).to(dtype), noise, step)

        latents = noised(tokens, 0)
        if step_index + 1 < len(timesteps):
            renoised = noised(step_tokens, int(timesteps[step_index + 1]))
            latents = torch.where(positions[..., None], latents, renoised)
        rounding = self.model.config.self_condition_rounding
        if rounding is not None:  # from this step's logits: no second decoder pass
            estimate = self.model.embed_decoder_logits(logits, rounding).to(dtype)
        return latents, estimate, CommittedTokens(positions, tokens, token_log_probs)

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
        prompt: str | list[str],
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
        commit_tokens: bool = False,
        guidance_scale: float = 1.0,
    ) -> CodeFusionPipelineOutput | tuple:
        r"""
        Args:
            prompt: One natural-language description or a list of them.
            num_inference_steps: Denoising steps (1 to `num_train_timesteps`); 10-50 is the useful range.
            num_return_sequences: Candidates per prompt (k), each from its own starting noise.
            generator: Seeds the starting noise (and the noise of stochastic steps).
            max_length: Return at most this many code tokens per candidate (defaults to the whole canvas).
            output_type: `"text"`, `"pt"` (token ids) or `"latent"` (the final canvas).
            return_trajectory: `True` to record the decoded canvas at every step, or a list of step indices
                (0-based) to record, so the program can be watched being revised.
            callback_on_step_end: Called after each step as `callback(pipe, step_index, timestep, callback_kwargs)`;
                it may return a dict with a replacement `"latents"`.
            callback_on_step_end_tensor_inputs: Tensors passed in `callback_kwargs`.
            timesteps: Custom timesteps, strictly decreasing, instead of `num_inference_steps` evenly placed ones;
                e.g. `[1100, 550]` with `latents` a canvas noised to step 1100, to refine a draft.
            eta: 0 for deterministic DDIM updates, 1 for DDPM ancestral sampling.
            latents: The starting canvas, `(num_prompts * num_return_sequences, max_code_length, latent_dim)`, with
                each prompt's candidates next to each other; drawn from `generator` when not given.
            rounding: How each step's x0 estimate is pulled onto code tokens before the step is taken: `"none"` (not
                at all, the paper), `"nearest"` (the nearest code embedding, Diffusion-LM's clamping), `"decoder"`
                (the decoder's most likely tokens, re-embedded) or `"decoder_mean"` (the embeddings averaged under
                the decoder's token distribution, CDCD's score interpolation). Rounding keeps the canvas made of
                token embeddings, which is all the denoiser saw in training. `None` (default) uses the rounding the
                model was trained for, `config.self_condition_rounding`, and no rounding when it has none.
            commit_tokens: Commit the decoder's most confident tokens step by step, as mask-predict does: after each
                step a growing share of the positions (all of them after the last step) is kept as clean token
                embeddings at t = 0, and the rest is re-noised from the decoder's tokens to the next timestep (see
                [`commit_tokens_step`]). Rounds with the decoder; the score of a candidate is its tokens' mean
                log-probability when they were committed, and the text comes from those tokens (a callback can
                change the canvas the next step reads, not the tokens already committed). Not in the paper; models
                trained with `config.commit_probability` have seen such canvases.
            guidance_scale: Classifier-free guidance (not in the paper): values above 1 push every denoiser output
                away from the unconditional one, whose prompt encoding is Gaussian noise (see [`guided_denoise`]).
                It needs a model that learned unconditional generation: phase 1's unconditional task, kept in phase
                2 with `--prompt_dropout_probability`. Each step then costs two denoiser passes. 1 (default): off.

        Returns:
            [`CodeFusionPipelineOutput`], or a tuple `(code, scores, trajectory)` when `return_dict=False`.
        """
        prompts = self.check_inputs(
            prompt,
            num_inference_steps,
            num_return_sequences,
            max_length,
            output_type,
            callback_on_step_end_tensor_inputs,
            rounding,
            latents,
            timesteps,
            commit_tokens,
            eta,
            guidance_scale,
        )
        rounding = self.resolve_rounding(rounding, commit_tokens)
        device = self._execution_device
        # Before the model changes mode: bad custom timesteps fail here with the model as it was.
        if timesteps is None:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        else:
            self.scheduler.set_timesteps(device=device, timesteps=timesteps)
            num_inference_steps = self.scheduler.num_inference_steps
        if isinstance(return_trajectory, bool):
            record_steps = set(range(num_inference_steps)) if return_trajectory else set()
        elif isinstance(return_trajectory, Iterable) and not isinstance(return_trajectory, str):
            record_steps = set(return_trajectory)
        else:
            raise ValueError(
                f"return_trajectory must be True, False or a list of step indices, got {return_trajectory!r}."
            )
        unknown_steps = [i for i in record_steps if not is_integer(i) or not 0 <= i < num_inference_steps]
        if unknown_steps:
            raise ValueError(
                f"return_trajectory must be True or step indices from 0 to {num_inference_steps - 1}, "
                f"got {unknown_steps}."
            )
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling; the previous mode is restored below, also after an error
        try:
            config = self.model.config

            encoder_hidden_states, attention_mask = self.encode_prompt(prompts, device)
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_return_sequences, dim=0)
            attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
            batch_size = len(prompts) * num_return_sequences
            if latents is None:
                latents = randn_tensor(
                    (batch_size, config.max_code_length, config.latent_dim),
                    generator=generator,
                    device=device,
                    dtype=encoder_hidden_states.dtype,
                )
            else:
                latents = latents.to(device=device, dtype=encoder_hidden_states.dtype)
            unconditional_states = None  # drawn after the canvas, so guidance leaves the starting noise as it was
            if guidance_scale > 1:
                unconditional_states = randn_tensor(
                    encoder_hidden_states.shape, generator=generator, device=device, dtype=encoder_hidden_states.dtype
                )
            code_embeddings = self.model.code_embedding_matrix() if rounding == "nearest" else None

            trajectory = []
            self_condition = None  # the previous step's x0 estimate, for models trained with self-conditioning
            committed = None  # the state of commit_tokens sampling
            for step_index, timestep in enumerate(self.progress_bar(self.scheduler.timesteps)):
                if commit_tokens:
                    latents, estimate, committed = self.commit_tokens_step(
                        latents,
                        committed,
                        step_index,
                        encoder_hidden_states,
                        attention_mask,
                        self_condition,
                        generator,
                        guidance_scale,
                        unconditional_states,
                    )
                else:
                    model_output = self.guided_denoise(
                        latents,
                        timestep,
                        encoder_hidden_states,
                        attention_mask,
                        self_condition,
                        guidance_scale,
                        unconditional_states,
                    )
                    step = self.scheduler.step(
                        model_output,
                        timestep,
                        latents,
                        eta=eta,
                        generator=generator,
                        code_embeddings=code_embeddings,
                        pred_original_sample=self.decoder_rounded_estimate(
                            model_output, timestep, latents, encoder_hidden_states, attention_mask, rounding
                        ),
                    )
                    latents, estimate = step.prev_sample, step.pred_original_sample
                if config.self_condition:
                    self_condition = estimate
                if step_index in record_steps:
                    token_ids, lengths, _ = (
                        self.score_tokens(committed.tokens, committed.log_probs)
                        if commit_tokens
                        else self.decode_canvas(estimate, encoder_hidden_states, attention_mask)
                    )
                    trajectory.append(
                        {
                            "step": step_index,
                            "timestep": int(timestep),
                            "code": self.ids_to_text(token_ids, lengths, max_length),
                        }
                    )
                if callback_on_step_end is not None:
                    callback_kwargs = {name: {"latents": latents}[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, step_index, int(timestep), callback_kwargs) or {}
                    latents = callback_outputs.pop("latents", latents)

            if commit_tokens:
                token_ids, lengths, scores = self.score_tokens(committed.tokens, committed.log_probs)
            else:
                token_ids, lengths, scores = self.decode_canvas(latents, encoder_hidden_states, attention_mask)
        finally:
            self.model.train(was_training)

        # Rank each prompt's candidates by score, best first.
        scores = scores.view(len(prompts), num_return_sequences)
        order = scores.argsort(dim=1, descending=True)
        flat_order = (
            order + torch.arange(len(prompts), device=order.device)[:, None] * num_return_sequences
        ).flatten()
        ranked_scores = scores.gather(1, order).tolist()

        def ranked(texts: list[str]) -> list[list[str]]:
            texts = [texts[i] for i in flat_order.tolist()]
            return [texts[i : i + num_return_sequences] for i in range(0, len(texts), num_return_sequences)]

        if output_type == "text":
            code = ranked(self.ids_to_text(token_ids, lengths, max_length))
        elif output_type == "pt":
            code = token_ids[flat_order].view(len(prompts), num_return_sequences, -1)[..., :max_length]
        else:
            code = latents[flat_order].view(len(prompts), num_return_sequences, *latents.shape[1:])
        for entry in trajectory:
            entry["code"] = ranked(entry["code"])
        self.maybe_free_model_hooks()

        if not return_dict:
            return (code, ranked_scores, trajectory or None)
        return CodeFusionPipelineOutput(code=code, scores=ranked_scores, trajectory=trajectory or None)


def is_finite_number(value: Any) -> bool:
    """A finite int or float that is not a bool (a float argument such as `eta` given as `True` is a mistake)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    """An integer (a Python or NumPy int) that is not a bool (`True` would otherwise pass as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def card_fields(model_card: bool | dict[str, Any], repo_id: str | os.PathLike) -> dict[str, Any]:
    """The `create_model_card` fields of a `model_card=` argument; the snippet loads `repo_id` unless it says."""
    if model_card is True:
        return {"repo_id": str(repo_id)}
    if isinstance(model_card, dict):
        return {"repo_id": str(repo_id)} | model_card
    raise ValueError(f"model_card must be True, False or a dict of model card fields, got {model_card!r}.")


def check_pipeline_folder(path: str) -> None:
    """Fail early, naming the file, when a saved pipeline is not a CodeFusion pipeline or a component is missing
    or unreadable (diffusers' own errors do not say which file broke)."""
    index_file = os.path.join(path, "model_index.json")
    try:
        with open(index_file) as f:
            index = json.load(f)
    except FileNotFoundError:
        raise OSError(f"{index_file} is missing: {path} is not a saved diffusers pipeline.") from None
    except json.JSONDecodeError as error:
        raise OSError(f"{index_file} is not valid JSON ({error}).") from None
    if index.get("_class_name") != CodeFusionPipeline.__name__:
        raise OSError(f"{path} holds a {index.get('_class_name')!r} pipeline, not a CodeFusionPipeline.")
    for component, required in REQUIRED_FILES.items():
        if index.get(component, [None, None])[0] is None:
            continue  # an optional component saved as absent
        for alternatives in required:
            names = (alternatives,) if isinstance(alternatives, str) else alternatives
            files = [os.path.join(path, component, name) for name in names]
            existing = next((f for f in files if os.path.isfile(f)), None)
            if existing is None:
                raise OSError(f"{files[0]} is missing: the {component!r} component cannot be loaded.")
            check_readable(existing)


def upload_pipeline_folder(
    folder: str,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload CodeFusion pipeline",
) -> CommitInfo:
    """Upload a saved pipeline folder as it is, model card included (`push_to_hub` would re-save the pipeline and
    rebuild a card from the pipeline alone, losing what the saver knew). Trainer checkpoints are left out."""
    check_pipeline_folder(folder)
    with reaching_the_hub(repo_id):
        repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        return upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            token=token,
            commit_message=commit_message,
            ignore_patterns=["checkpoint-*", "checkpoint-*/**"],
        )


@contextmanager
def reaching_the_hub(repo_id: str) -> Iterator[None]:
    """A push that cannot reach the Hub (no network, a wrong `HF_ENDPOINT`) fails with an `OSError` naming the
    endpoint, instead of the HTTP client's bare "Connection refused"."""
    try:
        yield
    except httpx2.TransportError as error:
        raise OSError(f"cannot reach the Hub at {constants.ENDPOINT} to push {repo_id} ({error}).") from None


def check_readable(path: str) -> None:
    """Raise an `OSError` naming `path` when a JSON or safetensors file does not parse."""
    try:
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt"):
                pass
        else:
            with open(path) as f:
                json.load(f)
    except Exception as error:  # any parse failure means a corrupted file
        raise OSError(f"{path} is corrupted: {error}") from None


__all__ = ["CodeFusionPipeline", "CodeFusionPipelineOutput", "CommittedTokens", "upload_pipeline_folder"]
