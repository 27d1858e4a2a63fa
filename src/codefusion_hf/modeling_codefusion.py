"""CodeFusion: a diffusion model for natural-language-to-code generation (Singh et al., EMNLP 2023)."""

import logging
import os
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, T5EncoderModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithCrossAttentions
from transformers.utils import ModelOutput, cached_file

from .configuration_codefusion import CodeFusionConfig
from .constants import ROUNDINGS
from .scheduling_codefusion import CodeFusionScheduler
from .weights_checksum_codefusion import check_checksum, record_checksum, saved_weight_files


@dataclass
class CodeFusionModelOutput(ModelOutput):
    """
    Args:
        loss: Weighted sum of the three terms below (the paper's per-step loss L_t).
        noise_loss: Mean squared error of the denoiser's output against its target (the noise, for epsilon
            prediction), over supervised canvas positions.
        embedding_loss: Mean squared error between the denoised embedding D_s (the x0 estimate) and the code
            embedding L(y).
        decoder_loss: Cross-entropy of the decoder's tokens read from D_s, -log p(y | D_s).
        length_loss: With `config.predict_length`, the length head's cross-entropy of each row's code length (rows
            whose prompt is replaced by noise, `unconditional`, excluded).
        logits: `(batch_size, canvas_length, vocab_size)` decoder logits for D_s.
        timesteps: The diffusion timestep of each row, or of each canvas position for rows with committed positions
            (`config.commit_probability`).
        row_losses: `(batch_size,)` each row's own loss (the weighted terms, averaged over its supervised
            positions), detached: what a loss-aware timestep sampler tracks.
        denoiser_hidden_states, decoder_hidden_states: With `output_hidden_states`, each stack's states: its input
            (projected canvas plus positions, and the timestep for the denoiser), the output of every layer but the
            last, and the last one's after the final layer norm, `(batch_size, canvas_length, hidden_size)` each.
        denoiser_attentions, denoiser_cross_attentions, decoder_attentions, decoder_cross_attentions: With
            `output_attentions`, every layer's self-attention weights over the canvas `(batch_size, num_heads,
            canvas_length, canvas_length)` and cross-attention weights over the prompt `(batch_size, num_heads,
            canvas_length, prompt_length)`.
        hidden_states, attentions, cross_attentions: The same tensors under transformers' generic names, for tools
            that read those: the canvas passes through the denoiser's layers, then the decoder's, so each tuple is
            the denoiser's followed by the decoder's (`num_denoiser_layers + num_decoder_layers + 2` states, as each
            stack reports its input and its output, and one attention tensor per layer).
    """

    loss: torch.FloatTensor | None = None
    noise_loss: torch.FloatTensor | None = None
    embedding_loss: torch.FloatTensor | None = None
    decoder_loss: torch.FloatTensor | None = None
    length_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    timesteps: torch.LongTensor | None = None
    row_losses: torch.FloatTensor | None = None
    denoiser_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    denoiser_attentions: tuple[torch.FloatTensor, ...] | None = None
    denoiser_cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    decoder_cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CodeFusionPackedCanvas:
    """The positions of a batch whose rows have canvases of different lengths, each row's own positions one after
    the other: the per-position work of a layer (projections, MLP, norms) runs on them alone, and only attention sees
    the padded `(batch_size, canvas_length)` canvas, whose positions past a row's canvas it ignores as keys. Padding
    a length beam's canvases to the longest would compute positions no row needs (measured in research/NOTES.md)."""

    padding_mask: torch.BoolTensor  # (batch_size, canvas_length): True past a row's own canvas
    indices: torch.LongTensor  # the kept positions, flat over (batch_size * canvas_length)
    sources: torch.LongTensor  # for each flat canvas position, its kept position, or len(indices) past the canvas

    @classmethod
    def from_padding_mask(cls, padding_mask: torch.BoolTensor) -> "CodeFusionPackedCanvas":
        kept = ~padding_mask.flatten()
        indices = kept.nonzero().squeeze(1)
        return cls(padding_mask, indices, torch.where(kept, kept.cumsum(0) - 1, len(indices)))

    @property
    def positions(self) -> torch.LongTensor:
        """Each kept position's place on its row's canvas."""
        return self.indices % self.padding_mask.shape[1]

    @property
    def rows(self) -> torch.LongTensor:
        """Each kept position's row."""
        return self.indices // self.padding_mask.shape[1]

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """`(batch_size, canvas_length, features)` to `(kept positions, features)`."""
        return padded.flatten(0, 1).index_select(0, self.indices)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """`(kept positions, features)` to `(batch_size, canvas_length, features)`, zeros past each row's canvas (a
        gather from the positions and one zero row: on a CPU faster than scattering into zeros)."""
        with_zero = torch.cat([packed, packed.new_zeros(1, packed.shape[-1])])
        return with_zero.index_select(0, self.sources).view(*self.padding_mask.shape, -1)


class CodeFusionAttention(nn.Module):
    """Multi-head attention through `F.scaled_dot_product_attention` (flash and memory-efficient kernels where the
    device has them; any number of rows, none included). Its weights are laid out as `nn.MultiheadAttention`'s
    (`in_proj_weight` holding the query, key and value projections, `in_proj_bias`, `out_proj`), which earlier
    versions of this model used, so their checkpoints load unchanged."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * hidden_size))
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def project_key_value(self, key_value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of `key_value_states`, `(batch_size, num_heads, length, head_dim)` each: what a
        cross-attention over an unchanging prompt can compute once."""
        width = key_value_states.shape[-1]
        key, value = F.linear(key_value_states, self.in_proj_weight[width:], self.in_proj_bias[width:]).chunk(2, -1)
        return key.unflatten(-1, (self.num_heads, -1)).transpose(1, 2), value.unflatten(
            -1, (self.num_heads, -1)
        ).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
        packed: CodeFusionPackedCanvas | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from `hidden_states` to `key_value_states` (the same tensor for self-attention), or to their
        projected `key_value` when given; `key_padding_mask` is True at keys to ignore. With `packed`,
        `hidden_states` (and the output) are its kept positions, padded for the attention only. Returns the output
        and, with `output_attentions`, the attention weights, computed by an explicit softmax instead of the fused
        kernel, which does not return them."""
        width = hidden_states.shape[-1]
        if key_value_states is hidden_states:
            projected = F.linear(hidden_states, self.in_proj_weight, self.in_proj_bias)
            query, key, value = (projected if packed is None else packed.pad(projected)).chunk(3, dim=-1)
            key, value = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in (key, value))
        else:
            query = F.linear(hidden_states, self.in_proj_weight[:width], self.in_proj_bias[:width])
            query = query if packed is None else packed.pad(query)
            key, value = self.project_key_value(key_value_states) if key_value is None else key_value
        query = query.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if output_attentions:
            scores = query @ key.transpose(-2, -1) * query.shape[-1] ** -0.5
            if key_padding_mask is not None:
                scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            weights = scores.softmax(dim=-1)
            attended = F.dropout(weights, dropout, self.training) @ value
        else:
            mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout)
        attended = attended.transpose(1, 2).flatten(-2)
        return self.out_proj(attended if packed is None else packed.pack(attended)), weights


class CodeFusionLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: self-attention over the canvas, cross-attention to the prompt, MLP."""

    def __init__(self, config: CodeFusionConfig):
        super().__init__()
        hidden, heads = config.hidden_size, config.num_attention_heads
        self.self_attn_norm = nn.LayerNorm(hidden)
        self.self_attn = CodeFusionAttention(hidden, heads, config.dropout)
        self.cross_attn_norm = nn.LayerNorm(hidden)
        self.cross_attn = CodeFusionAttention(hidden, heads, config.dropout)
        self.mlp_norm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, config.intermediate_size), nn.GELU(), nn.Linear(config.intermediate_size, hidden)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_padding_mask: torch.Tensor,
        prompt_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
        packed: CodeFusionPackedCanvas | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The new states, and with `output_attentions` the self- and cross-attention weights. With `packed`, rows
        on canvases of different lengths: `hidden_states` are its kept positions, and the self-attention ignores the
        positions past each row's canvas."""
        normed = self.self_attn_norm(hidden_states)
        code_padding_mask = None if packed is None else packed.padding_mask
        attended, self_weights = self.self_attn(
            normed, normed, code_padding_mask, output_attentions=output_attentions, packed=packed
        )
        hidden_states = hidden_states + self.dropout(attended)
        normed = self.cross_attn_norm(hidden_states)
        attended, cross_weights = self.cross_attn(
            normed, encoder_hidden_states, encoder_padding_mask, prompt_key_value, output_attentions, packed
        )
        hidden_states = hidden_states + self.dropout(attended)
        hidden_states = hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states)))
        return hidden_states, self_weights, cross_weights


class CodeFusionCodeEmbedding(nn.Embedding):
    """L(y), the code token embedding that diffusion runs in. With `normalize=True` every embedding is rescaled to
    norm sqrt(dim) (unit variance per dimension): learned embeddings otherwise drift in scale relative to the
    unit-variance noise, which changes the signal-to-noise ratio of every timestep."""

    def __init__(self, num_embeddings: int, embedding_dim: int, normalize: bool = False):
        super().__init__(num_embeddings, embedding_dim)
        self.normalize = normalize

    def forward(self, code_ids: torch.Tensor) -> torch.Tensor:
        embeddings = super().forward(code_ids)
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=-1) * self.embedding_dim**0.5
        return embeddings


class CodeFusionStack(nn.Module):
    """Projects canvas embeddings (`input_dim` features per position) to the model width, adds positions, and runs
    a stack of `CodeFusionLayer`s."""

    def __init__(self, config: CodeFusionConfig, num_layers: int, input_dim: int):
        super().__init__()
        self.input_proj = nn.Linear(input_dim, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_code_length, config.hidden_size)
        self.layers = nn.ModuleList(CodeFusionLayer(config) for _ in range(num_layers))
        self.norm = nn.LayerNorm(config.hidden_size)

    def forward(
        self,
        latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_padding_mask: torch.Tensor,
        conditioning: torch.Tensor | None = None,
        prompt_key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        code_padding_mask: torch.Tensor | None = None,
    ) -> BaseModelOutputWithCrossAttentions:
        """The normed states of the last layer, and on request every layer's input states (the last replaced by the
        output, as T5 reports them) and attention weights. `code_padding_mask`, True at the positions past each row's
        own canvas, has the layers compute only the positions on the canvases (`CodeFusionPackedCanvas`); the states
        past them are zeros."""
        packed = None
        if code_padding_mask is None:
            positions = torch.arange(latents.shape[1], device=latents.device)
            hidden_states = self.input_proj(latents) + self.position_embedding(positions)
            if conditioning is not None:  # one vector per row, or one per position
                hidden_states = hidden_states + (conditioning[:, None, :] if conditioning.ndim == 2 else conditioning)
        else:
            packed = CodeFusionPackedCanvas.from_padding_mask(code_padding_mask)
            hidden_states = self.input_proj(packed.pack(latents)) + self.position_embedding(packed.positions)
            if conditioning is not None:
                hidden_states = hidden_states + (
                    conditioning[packed.rows] if conditioning.ndim == 2 else packed.pack(conditioning)
                )
        all_states, self_weights, cross_weights = [], [], []  # filled only when asked for
        for index, layer in enumerate(self.layers):
            if output_hidden_states:
                all_states.append(hidden_states if packed is None else packed.pad(hidden_states))
            key_value = None if prompt_key_values is None else prompt_key_values[index]
            hidden_states, self_attention, cross_attention = layer(
                hidden_states,
                encoder_hidden_states,
                encoder_padding_mask,
                key_value,
                output_attentions,
                packed,
            )
            if output_attentions:
                self_weights.append(self_attention)
                cross_weights.append(cross_attention)
        hidden_states = self.norm(hidden_states)
        if packed is not None:
            hidden_states = packed.pad(hidden_states)
        return BaseModelOutputWithCrossAttentions(
            last_hidden_state=hidden_states,
            hidden_states=(*all_states, hidden_states) if output_hidden_states else None,
            attentions=tuple(self_weights) if output_attentions else None,
            cross_attentions=tuple(cross_weights) if output_attentions else None,
        )

    def prompt_key_values(self, encoder_hidden_states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's cross-attention keys and values of the prompt."""
        return [layer.cross_attn.project_key_value(encoder_hidden_states) for layer in self.layers]


@dataclass
class CodeFusionPromptCache:
    """The cross-attention keys and values of an encoded prompt in every denoiser and decoder layer. The prompt is
    the same at every sampling step, so a sampler projects them once per call
    ([`~CodeFusionModel.cache_prompt`]) instead of once per layer and step."""

    denoiser: list[tuple[torch.Tensor, torch.Tensor]]
    decoder: list[tuple[torch.Tensor, torch.Tensor]]

    def __getitem__(self, rows: torch.Tensor | slice) -> "CodeFusionPromptCache":
        """The cache of some rows (candidates), e.g. those still being denoised."""
        return CodeFusionPromptCache(
            *([(key[rows], value[rows]) for key, value in stack] for stack in (self.denoiser, self.decoder))
        )

    @classmethod
    def cat(cls, caches: list["CodeFusionPromptCache"]) -> "CodeFusionPromptCache":
        """The caches' rows one after the other, as `torch.cat` of their prompts would give."""

        def joined(stacks):
            return [tuple(torch.cat(tensors) for tensors in zip(*layers)) for layers in zip(*stacks)]

        return cls(joined([c.denoiser for c in caches]), joined([c.decoder for c in caches]))


@dataclass
class _TrainingCanvas:
    """The canvas of one training step, as the stages of `CodeFusionModel.forward` build it: the labels padded to it
    (-100 where no loss is taken), the positions supervised, the clean embeddings L(y), the noise and timesteps drawn
    (one per row, or one per position once positions are committed), the noisy canvas the denoiser reads and its
    target."""

    labels: torch.LongTensor
    supervised: torch.BoolTensor
    clean_latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.LongTensor
    noisy_latents: torch.Tensor
    target: torch.Tensor


@dataclass
class _CanvasPasses:
    """What `CodeFusionModel.forward` computes over a noisy canvas, with labels or without: the denoiser's states and
    output, its x0 estimate D_s, and the decoder's states over D_s with their logits."""

    denoiser_states: BaseModelOutputWithCrossAttentions
    model_output: torch.Tensor
    denoised_latents: torch.Tensor
    decoder_states: BaseModelOutputWithCrossAttentions
    logits: torch.Tensor

    def state_fields(self) -> dict[str, tuple[torch.Tensor, ...] | None]:
        """The output's states and attention weights: each stack's (`denoiser_hidden_states`, ...), and under
        transformers' names both stacks' in the order the canvas passes them, the denoiser's then the decoder's."""
        fields = {}
        for kind in ("hidden_states", "attentions", "cross_attentions"):
            denoiser, decoder = getattr(self.denoiser_states, kind), getattr(self.decoder_states, kind)
            fields |= {f"denoiser_{kind}": denoiser, f"decoder_{kind}": decoder}
            fields[kind] = None if denoiser is None else denoiser + decoder
        return fields


def build_encoder(encoder_config, pretrained_name_or_path: str | None = None, **kwargs) -> PreTrainedModel:
    """The prompt encoder for a config: `T5EncoderModel` for T5/CodeT5 (AutoModel would add a T5 decoder), any
    other transformers encoder through `AutoModel`. A pooler is dropped: it is unused and DDP rejects parameters
    that get no gradient."""
    is_t5 = encoder_config.model_type == "t5"
    if pretrained_name_or_path is not None:
        encoder = (T5EncoderModel if is_t5 else AutoModel).from_pretrained(pretrained_name_or_path, **kwargs)
    else:
        encoder = T5EncoderModel(encoder_config) if is_t5 else AutoModel.from_config(encoder_config)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


# The logger of transformers' load report: a table of the tensors loaded wrongly, which says they were "newly
# initialized". `CodeFusionPreTrainedModel.from_pretrained` raises on those instead, in one message.
LOADING_LOGGER = logging.getLogger("transformers.modeling_utils")


@contextmanager
def held_load_reports():
    """Hold back transformers' load reports logged inside the block (yielded as a list of log records), so that an
    error raised in their place is the only message; a caller re-emits them when it does not raise."""
    reports = []

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            reports.append(record)
            return False
        return True

    LOADING_LOGGER.addFilter(hold)
    try:
        yield reports
    finally:
        LOADING_LOGGER.removeFilter(hold)


def loaded_weight_files(path: str, kwargs: dict[str, Any]) -> list[str]:
    """The local safetensors files `from_pretrained(path, **kwargs)` loaded: those of the folder, or the single
    weights file of a repo id in the Hub cache (none for a sharded repo, whose shards are checked only in a folder)."""
    folder = os.path.join(path, kwargs.get("subfolder") or "")
    if os.path.isdir(folder):
        return saved_weight_files(folder, kwargs.get("variant"))
    variant = kwargs.get("variant")
    resolved = cached_file(
        path,
        f"model.{variant}.safetensors" if variant else "model.safetensors",
        subfolder=kwargs.get("subfolder") or "",
        cache_dir=kwargs.get("cache_dir"),
        revision=kwargs.get("revision"),
        local_files_only=True,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    return [resolved] if resolved else []


class CodeFusionPreTrainedModel(PreTrainedModel):
    config_class = CodeFusionConfig
    base_model_prefix = "codefusion"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["CodeFusionLayer"]

    @classmethod
    def is_custom_code(cls) -> bool:
        """False, although this code lives outside transformers: transformers then takes any module whose own
        parameters are all loaded as initialised, which wrongly includes modules with none of their own (T5's
        attention: a missing projection kept the generic std 1.0, not T5's). Every init here goes through
        `transformers.initialization`, which skips loaded weights by itself, as transformers' own models rely on."""
        return False

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, CodeFusionCodeEmbedding):
            # Unit-scale code embeddings share the scale of the Gaussian noise, as in Diffusion-LM.
            init.normal_(module.weight, mean=0.0, std=self.config.code_embedding_init_std)
        elif isinstance(module, CodeFusionAttention):  # as nn.MultiheadAttention initialises these (out_proj: Linear)
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
        else:
            super()._init_weights(module)

    def save_pretrained(  # max_shard_size and variant by name: diffusers passes them only to a signature with them
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        push_to_hub: bool = False,
        max_shard_size: int | str = "50GB",
        variant: str | None = None,
        **kwargs,
    ) -> None:
        """As transformers', with the sha256 of the tensor data written into each safetensors file's metadata, which
        `from_pretrained` checks (a push writes it before uploading: `_upload_modified_files`)."""
        super().save_pretrained(
            save_directory,
            is_main_process=is_main_process,
            push_to_hub=push_to_hub,
            max_shard_size=max_shard_size,
            variant=variant,
            **kwargs,
        )
        if not push_to_hub and self.should_save_on_this_rank(is_main_process):  # where transformers wrote them
            for path in saved_weight_files(str(save_directory), variant):
                record_checksum(path)

    def _upload_modified_files(self, working_dir: str | os.PathLike, repo_id: str, files_timestamps, **kwargs):
        """transformers' upload of the files a save wrote (`save_pretrained(push_to_hub=True)`, `push_to_hub`), each
        new safetensors file given its checksum first, so that the Hub's copy carries it too."""
        for name in os.listdir(working_dir):
            path = os.path.join(working_dir, name)
            if name.endswith(".safetensors") and files_timestamps.get(name) != os.path.getmtime(path):
                record_checksum(path, unless_recorded=True)
        return super()._upload_modified_files(working_dir, repo_id, files_timestamps, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, **kwargs):
        """As transformers', but weights that do not fit the model config.json describes (a tensor missing,
        unexpected, or of another shape) raise a `ValueError` naming the file, the tensors, their shapes and the config
        keys of those sizes: transformers only warns and initialises the missing ones at random, a silently wrong
        model. A tensor under no module of the model is skipped with a one-line warning, as transformers does; NaN or
        infinite weights, and weights whose data no longer has the sha256 recorded at save, are refused. Tied weights
        and non-persistent buffers are not counted. For a partial load on purpose, pass `output_loading_info=True`
        (the mismatches are returned, as transformers does, not raised; nothing is checked) and
        `ignore_mismatched_sizes=True` to reinitialise tensors of another shape. `predict_length=True` given here may
        add a length head to a model saved without one (e.g. phase 2 after phase 1): that head starts new."""
        if kwargs.get("output_loading_info"):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        # Mismatched shapes are collected here: transformers' own error only points at a logged report.
        with held_load_reports() as reports:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path,
                *model_args,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                **kwargs,
            )

        def listed(keys: set[str]) -> str:  # a layer's tensors as one entry: "denoiser.layers.1.* (16 tensors)"
            layers = Counter(re.sub(r"^(.+?\.(?:layers|block|layer)\.\d+)\..+$", r"\1.*", key) for key in keys)
            return ", ".join(name if n == 1 else f"{name} ({n} tensors)" for name, n in sorted(layers.items()))

        config = model.config
        sizes = {f"encoder_config.{k}": v for k, v in config.encoder_config.to_dict().items() if type(v) is int}
        sizes |= {k: v for k, v in config.to_dict().items() if type(v) is int and not k.endswith("_token_id")}
        problems = []
        missing = set(info["missing_keys"])
        if kwargs.get("predict_length") is True:  # asked for here: a length head the saved model may not have
            new_head = {key for key in missing if key.startswith("length_head.")}
            if new_head:
                LOADING_LOGGER.info(f"A new length head ({listed(new_head)}) starts from its initialisation.")
            missing -= new_head
        if missing:
            problems.append(f"missing from the file: {listed(missing)}")
        # A tensor under a module the model has (decoder.layers.1.* with one layer) means config.json does not fit
        # the weights: refused. One under no module of the model (extra.weight) is skipped and reported, as
        # transformers does.
        children = dict(model.named_children())
        own = {key for key in info["unexpected_keys"] if key.split(".")[0] in children}
        unknown = set(info["unexpected_keys"]) - own
        if own:
            problems.append(f"in the file but not in the model: {listed(own)}")
        for key, saved, built in [] if ignore_mismatched_sizes else sorted(info["mismatched_keys"]):
            differing = set(built) if len(built) != len(saved) else {b for b, s in zip(built, saved) if b != s}
            keys = [f"{name}={value}" for name, value in sizes.items() if value in differing]
            problems.append(
                f"{key} has shape {tuple(saved)} in the file but {tuple(built)} in the model"
                + (f" (config.json: {', '.join(keys)})" if keys else "")
            )
        folder = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        weight_files = loaded_weight_files(str(pretrained_model_name_or_path), kwargs)
        for path in weight_files:  # damage inside the tensor data, which safetensors does not check
            check_checksum(path)
        source = weight_files[0] if len(weight_files) == 1 else folder
        if problems:
            raise ValueError(
                f"{source} does not hold the weights of the {cls.__name__} that {os.path.join(folder, 'config.json')} "
                f"describes: {'; '.join(problems)}. Load the config.json saved with these weights (layer counts and "
                "sizes as they were trained), or pass output_loading_info=True to load the rest and get this report."
            )
        nonfinite = {
            name
            for name, tensor in model.state_dict().items()
            if tensor.is_floating_point() and not tensor.is_meta and not torch.isfinite(tensor).all()
        }
        if nonfinite:  # a diverged run's checkpoint: refused here, not a NaN error at the first call
            raise ValueError(
                f"{source} holds NaN or infinite values in "
                f"{listed(nonfinite)}: the training that saved it diverged. Load an earlier checkpoint, or pass "
                "output_loading_info=True to load it anyway."
            )
        if unknown:
            LOADING_LOGGER.warning(
                f"{folder}: the weights file holds tensors no module of {cls.__name__} has, not loaded (unexpected "
                f"keys): {listed(unknown)}. Save the model again to drop them."
            )
            if not info["mismatched_keys"]:
                reports.clear()  # transformers' table says the same in many lines
        for report in reports:  # what was reinitialised on request (ignore_mismatched_sizes), as transformers says
            LOADING_LOGGER.handle(report)
        return model

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        """Ignore only this class's own key patterns: transformers also gathers the prompt encoder's, unanchored
        regexes meant for that architecture's checkpoints (T5EncoderModel's r"decoder" would hide every unexpected
        tensor of CodeFusion's decoder), while a CodeFusion checkpoint stores exactly the encoder's tensors."""
        gathered = self._keys_to_ignore_on_load_unexpected, self._keys_to_ignore_on_load_missing
        self._keys_to_ignore_on_load_unexpected = set(type(self)._keys_to_ignore_on_load_unexpected or ())
        self._keys_to_ignore_on_load_missing = set(type(self)._keys_to_ignore_on_load_missing or ())
        try:
            super()._adjust_missing_and_unexpected_keys(loading_info)
        finally:
            self._keys_to_ignore_on_load_unexpected, self._keys_to_ignore_on_load_missing = gathered


class CodeFusionModel(CodeFusionPreTrainedModel):
    r"""
    CodeFusion: encoder E (prompt), denoiser N (noisy code canvas -> noise estimate, cross-attending to E's output),
    decoder D + classification head (x0 estimate -> code tokens). Training draws a timestep and noise per row and
    returns the paper's three loss terms; generation lives in [`CodeFusionPipeline`].

    Stages, usable on their own: [`~CodeFusionModel.encode`], [`~CodeFusionModel.embed_code`],
    [`~CodeFusionModel.denoise`], [`~CodeFusionModel.decode`].
    """

    def __init__(self, config: CodeFusionConfig):
        super().__init__(config)
        self.encoder = build_encoder(config.encoder_config)
        encoder_hidden_size = config.encoder_config.hidden_size
        self.encoder_proj = (
            nn.Linear(encoder_hidden_size, config.hidden_size)
            if encoder_hidden_size != config.hidden_size
            else nn.Identity()
        )
        self.code_embedding = CodeFusionCodeEmbedding(
            config.vocab_size, config.latent_dim, normalize=config.normalize_code_embeddings
        )
        self.time_proj = Timesteps(config.hidden_size, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(config.hidden_size, config.hidden_size)
        # With self-conditioning the denoiser reads [noisy canvas, previous x0 estimate] at each position.
        denoiser_input_dim = config.latent_dim * (2 if config.self_condition else 1)
        self.denoiser = CodeFusionStack(config, config.num_denoiser_layers, denoiser_input_dim)
        self.denoiser_out = nn.Linear(config.hidden_size, config.latent_dim)
        self.decoder = CodeFusionStack(config, config.num_decoder_layers, config.latent_dim)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        # Code lengths 0 to max_code_length, read from the mean of the prompt encoding.
        self.length_head = nn.Linear(config.hidden_size, config.max_code_length + 1) if config.predict_length else None
        self.neighbor_proj = self.neighbor_embedding = self.neighbor_position_embedding = None
        if config.num_neighbors:  # retrieved code, read into the cross-attention memory (see `add_neighbors`)
            self.neighbor_proj = nn.Linear(config.latent_dim, config.hidden_size)
            self.neighbor_embedding = nn.Embedding(config.num_neighbors, config.hidden_size)
            self.neighbor_position_embedding = nn.Embedding(config.max_code_length, config.hidden_size)
        # The training noise schedule; sampling uses the pipeline's scheduler (which must match it). Built on the CPU
        # explicitly: from_pretrained constructs models on the meta device, and these tensors are not weights.
        with torch.device("cpu"):
            self.noise_scheduler = CodeFusionScheduler(
                num_train_timesteps=config.num_train_timesteps,
                noise_schedule=config.noise_schedule,
                prediction_type=config.prediction_type,
            )
        self.post_init()

    @classmethod
    def from_pretrained_encoder(
        cls, encoder_name_or_path: str, preset: str = "small", **config_overrides
    ) -> "CodeFusionModel":
        """Build a CodeFusion model around pretrained encoder weights, e.g. `"Salesforce/codet5-small"` (the paper's)
        or a local folder. The rest of the model is sized by `preset` and `config_overrides` and starts random."""
        encoder_config = AutoConfig.from_pretrained(encoder_name_or_path)
        config = CodeFusionConfig.from_preset(preset, encoder_config=encoder_config, **config_overrides)
        model = cls(config)
        # fp32 weights whatever the checkpoint stores (e.g. fp16): mixed precision is the Trainer's job.
        model.encoder = build_encoder(encoder_config, encoder_name_or_path, dtype=torch.float32)
        return model

    @torch.no_grad()
    def init_layers_from_encoder(self) -> None:
        """Start the denoiser's and decoder's layers from the prompt encoder's pretrained BERT layers (taken evenly
        spaced across its depth): self-attention and MLP weights are copied, the cross-attention's output projection
        starts at zero so each layer first computes what its encoder layer did, and the pre-norm layer norms keep
        their identity start (BERT's are post-norm). Needs a BERT-type encoder (e.g. MiniLM) of the model's width and
        MLP size; not in the paper, where both stacks start random."""
        config, encoder_config = self.config, self.config.encoder_config
        if encoder_config.model_type != "bert":
            raise ValueError(
                "init_layers_from_encoder copies BERT layers, but the prompt encoder is "
                f"{encoder_config.model_type!r}."
            )
        sizes = {"hidden_size": encoder_config.hidden_size, "intermediate_size": encoder_config.intermediate_size}
        sizes["num_attention_heads"] = encoder_config.num_attention_heads
        mismatched = {name: size for name, size in sizes.items() if getattr(config, name) != size}
        if mismatched:
            raise ValueError(
                f"init_layers_from_encoder needs the encoder's sizes: set {mismatched} in the config (it has "
                f"{ {name: getattr(config, name) for name in mismatched} })."
            )
        sources = self.encoder.encoder.layer
        for stack in (self.denoiser, self.decoder):
            count = len(stack.layers)
            for index, layer in enumerate(stack.layers):
                source = sources[round(index * (len(sources) - 1) / max(count - 1, 1))]
                attention = source.attention.self
                layer.self_attn.in_proj_weight.copy_(
                    torch.cat([attention.query.weight, attention.key.weight, attention.value.weight])
                )
                layer.self_attn.in_proj_bias.copy_(
                    torch.cat([attention.query.bias, attention.key.bias, attention.value.bias])
                )
                layer.self_attn.out_proj.load_state_dict(source.attention.output.dense.state_dict())
                layer.mlp[0].load_state_dict(source.intermediate.dense.state_dict())
                layer.mlp[2].load_state_dict(source.output.dense.state_dict())
                layer.cross_attn.out_proj.weight.zero_()
                layer.cross_attn.out_proj.bias.zero_()

    def train(self, mode: bool = True) -> "CodeFusionModel":
        """As `nn.Module.train`, but a frozen prompt encoder (no parameter requires a gradient) stays in eval mode:
        it is a fixed function of the prompt, so its dropout would only add noise to what the denoiser reads."""
        super().train(mode)
        if mode and self.encoder_is_frozen:
            self.encoder.eval()
        return self

    @property
    def encoder_is_frozen(self) -> bool:
        """No parameter of the prompt encoder requires a gradient: it is a fixed function of the prompt."""
        return not any(parameter.requires_grad for parameter in self.encoder.parameters())

    def get_input_embeddings(self) -> CodeFusionCodeEmbedding:
        """The code embedding L(y), so that `resize_token_embeddings` resizes the code vocabulary (and, through
        `get_output_embeddings`, the head with it); the prompt encoder keeps its own vocabulary."""
        return self.code_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.code_embedding = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> CodeFusionCodeEmbedding:
        """As transformers' (the code embedding and the head resized together, `config.vocab_size` updated), but
        each added code token gets an embedding of its own: diffusion runs in L(y), where transformers' mean
        resizing would put every added token at the old embeddings' mean (all at one point, near the origin, far
        inside the noise), indistinguishable to the denoiser and to rounding. With `mean_resizing` (the default) the
        added embeddings are drawn from the old ones' mean and covariance and then centred on that mean, so that
        they average to it as transformers' do; without it they start as the model initialises the code embedding
        (`config.code_embedding_init_std`). The head's added rows are transformers'. The recorded tokenizer
        vocabulary (`config.code_vocabulary_sha256`) is cleared: the next pipeline save records the new one."""
        old_num_tokens = self.get_input_embeddings().num_embeddings
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if embeddings.num_embeddings != old_num_tokens:
            self.config.code_vocabulary_sha256 = None
        added = embeddings.num_embeddings - old_num_tokens
        if added > 0:
            with torch.no_grad():
                old = embeddings.weight[:old_num_tokens].float()
                if mean_resizing:
                    mean = old.mean(dim=0)
                    # Gaussian weights over the centred old rows: draws with exactly their covariance, of any rank.
                    draws = torch.randn(added, old_num_tokens, device=old.device) @ (old - mean) / old_num_tokens**0.5
                    new = mean + draws - draws.mean(dim=0)
                else:
                    new = torch.randn(added, old.shape[1], device=old.device) * self.config.code_embedding_init_std
                embeddings.weight[old_num_tokens:] = new.to(embeddings.weight.dtype)
        return embeddings

    def encode(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode the prompt once: `(batch_size, prompt_length, hidden_size)` states the denoiser and decoder read."""
        hidden_states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.encoder_proj(hidden_states)

    @staticmethod
    def unconditional_prompt(
        prompt_noise: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompt of unconditional generation, as phase 1 trains it and classifier-free guidance reads it:
        Gaussian noise as the encoder states (`prompt_noise`, shaped like them) over an unmasked prompt."""
        return prompt_noise, None if attention_mask is None else torch.ones_like(attention_mask)

    def cache_prompt(self, encoder_hidden_states: torch.Tensor) -> CodeFusionPromptCache:
        """Project the encoded prompt to every denoiser and decoder layer's cross-attention keys and values once,
        for [`~CodeFusionModel.denoise`] and [`~CodeFusionModel.decode`] calls over many steps (`prompt_cache=`)."""
        return CodeFusionPromptCache(
            self.denoiser.prompt_key_values(encoder_hidden_states),
            self.decoder.prompt_key_values(encoder_hidden_states),
        )

    def length_logits(
        self, encoder_hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`(batch_size, max_code_length + 1)` logits of each prompt's code length (`config.predict_length`), from
        the mean of its encoded positions."""
        if self.length_head is None:
            raise ValueError(
                "This model has no length head (config.predict_length=False): train one with predict_length=True "
                "to predict code lengths."
            )
        if attention_mask is None:
            return self.length_head(encoder_hidden_states.mean(dim=1))
        weights = attention_mask[..., None].to(encoder_hidden_states.dtype)
        pooled = (encoder_hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return self.length_head(pooled)

    def add_neighbors(
        self,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        neighbor_code_ids: torch.LongTensor,
        neighbor_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention memory of a retrieval-augmented model (`config.num_neighbors`): the prompt encoding
        followed by the code of each row's retrieved neighbours, `(batch_size, k, code_length)` token ids (k at most
        `num_neighbors`; `neighbor_attention_mask` 0 at their padding). Each neighbour's code is read through the code
        embedding (case-preserving, where the prompt encoder may lowercase), projected to the model width, with an
        embedding of which neighbour it is and of each token's position in it. Returns the memory and its mask."""
        if self.neighbor_proj is None:
            raise ValueError(
                "neighbor_code_ids were given, but this model reads no neighbours (config.num_neighbors=0): train "
                "one with num_neighbors set, or leave the neighbours out."
            )
        batch_size, k, length = neighbor_code_ids.shape
        if k > self.config.num_neighbors or length > self.config.max_code_length:
            raise ValueError(
                f"neighbor_code_ids has shape {tuple(neighbor_code_ids.shape)}: at most config.num_neighbors="
                f"{self.config.num_neighbors} neighbours of at most max_code_length={self.config.max_code_length} "
                "tokens each."
            )
        device = neighbor_code_ids.device
        code = self.neighbor_proj(self.embed_code(neighbor_code_ids))
        code = code + self.neighbor_embedding(torch.arange(k, device=device))[:, None]
        code = code + self.neighbor_position_embedding(torch.arange(length, device=device))
        if attention_mask is None:
            attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.long, device=device)
        if neighbor_attention_mask is None:
            neighbor_attention_mask = torch.ones_like(neighbor_code_ids)
        memory = torch.cat([encoder_hidden_states, code.flatten(1, 2).to(encoder_hidden_states.dtype)], dim=1)
        mask = torch.cat([attention_mask, neighbor_attention_mask.flatten(1).to(attention_mask.dtype)], dim=1)
        return memory, mask

    def embed_code(self, code_ids: torch.LongTensor) -> torch.Tensor:
        """L(y): the continuous embedding of code tokens, the space diffusion runs in."""
        return self.code_embedding(code_ids)

    def code_embedding_matrix(self) -> torch.Tensor:
        """L(y) of every token of the vocabulary, `(vocab_size, latent_dim)`."""
        return self.embed_code(torch.arange(self.config.vocab_size, device=self.code_embedding.weight.device))

    def denoise(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        self_condition: torch.Tensor | None = None,
        prompt_cache: CodeFusionPromptCache | None = None,
        code_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoiser N: predicts the noise (or x0, see `config.prediction_type`) in a noisy canvas.

        `timesteps` holds one step for all rows, one per row, or one per canvas position `(batch_size,
        canvas_length)` (a canvas with committed positions, see `config.commit_probability`). `self_condition` is
        the previous x0 estimate, shaped like the canvas, for a model trained with `config.self_condition` (zeros
        when not given, as at the first sampling step). `prompt_cache` ([`~CodeFusionModel.cache_prompt`] of
        `encoder_hidden_states`) saves projecting the prompt again. `code_attention_mask`, `(batch_size,
        canvas_length)` with 1 on a row's canvas and 0 past it, lets rows on canvases of different lengths share a
        batch: a row's positions are then computed as on its own canvas (the outputs past it are meaningless)."""
        states = self._denoiser_states(
            noisy_latents,
            timesteps,
            encoder_hidden_states,
            encoder_attention_mask,
            self_condition,
            prompt_cache,
            code_attention_mask=code_attention_mask,
        )
        return self.denoiser_out(states.last_hidden_state)

    def _denoiser_states(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        self_condition: torch.Tensor | None,
        prompt_cache: CodeFusionPromptCache | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        code_attention_mask: torch.Tensor | None = None,
    ) -> BaseModelOutputWithCrossAttentions:
        """The denoiser stack's output before its projection to the latent space (see `denoise`)."""
        if self.config.self_condition:
            if self_condition is None:
                self_condition = torch.zeros_like(noisy_latents)
            noisy_latents = torch.cat([noisy_latents, self_condition.to(noisy_latents.dtype)], dim=-1)
        elif self_condition is not None:
            raise ValueError("self_condition was passed, but this model was trained without config.self_condition.")
        timesteps = timesteps.expand(noisy_latents.shape[0]) if timesteps.ndim == 0 else timesteps
        time_embedding = self.time_embedding(self.time_proj(timesteps.flatten()).to(noisy_latents.dtype))
        time_embedding = time_embedding.view(*timesteps.shape, time_embedding.shape[-1])  # also for 0 rows
        return self.denoiser(
            noisy_latents,
            encoder_hidden_states,
            _padding_mask(encoder_attention_mask),
            conditioning=time_embedding,
            prompt_key_values=None if prompt_cache is None else prompt_cache.denoiser,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            code_padding_mask=_padding_mask(code_attention_mask),
        )

    def decode(
        self,
        latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        prompt_cache: CodeFusionPromptCache | None = None,
        code_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The decoder D and head: logits over the code vocabulary for each canvas position of a denoised canvas.
        `prompt_cache` and `code_attention_mask` as in [`~CodeFusionModel.denoise`]."""
        return self.lm_head(
            self.decoder_states(
                latents, encoder_hidden_states, encoder_attention_mask, prompt_cache, code_attention_mask
            )
        )

    def decoder_states(
        self,
        latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        prompt_cache: CodeFusionPromptCache | None = None,
        code_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The decoder's last states, `(batch_size, canvas_length, hidden_size)`, before the vocabulary head
        (`lm_head`), for a sampler that needs logits at some positions only."""
        return self.decoder(
            latents,
            encoder_hidden_states,
            _padding_mask(encoder_attention_mask),
            prompt_key_values=None if prompt_cache is None else prompt_cache.decoder,
            code_padding_mask=_padding_mask(code_attention_mask),
        ).last_hidden_state

    def round_estimate(
        self,
        estimate: torch.Tensor,
        rounding: str,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        *,
        logits: torch.Tensor | None = None,
        code_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pull an x0 estimate onto code tokens, so that the canvas stays made of token embeddings, all the denoiser
        saw in training. `rounding` is one of `ROUNDINGS`: `"none"` (the estimate as it is, the paper), `"nearest"`
        (each position's nearest code embedding, Diffusion-LM's clamping), `"decoder"` (the embeddings of the
        decoder's most likely tokens) or `"decoder_mean"` (the embeddings averaged under the decoder's token
        distribution, CDCD's score interpolation).

        The decoder roundings read the decoder's `logits` of `estimate` when given (no second decoder pass), else run
        the decoder on the prompt states; `"nearest"` uses `code_embeddings` (the `code_embedding_matrix()`) when the
        caller has it."""
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}.")
        if rounding == "none":
            return estimate
        if rounding == "nearest":
            if code_embeddings is None:
                code_embeddings = self.code_embedding_matrix()
            distances = torch.cdist(estimate, code_embeddings.to(estimate.dtype).unsqueeze(0))
            return code_embeddings[distances.argmin(dim=-1)].to(estimate.dtype)
        if logits is None:
            logits = self.decode(estimate, encoder_hidden_states, encoder_attention_mask)
        if rounding == "decoder":
            return self.embed_code(logits.argmax(dim=-1)).to(estimate.dtype)
        return (logits.float().softmax(dim=-1) @ self.code_embedding_matrix().float()).to(estimate.dtype)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_last_hidden_state: torch.Tensor | None = None,
        timesteps: torch.LongTensor | None = None,
        noise: torch.Tensor | None = None,
        unconditional: torch.BoolTensor | None = None,
        prompt_noise: torch.Tensor | None = None,
        canvas_length: int | None = None,
        row_loss_weights: torch.Tensor | None = None,
        neighbor_code_ids: torch.LongTensor | None = None,
        neighbor_attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> CodeFusionModelOutput | tuple:
        r"""
        One training step of the diffusion objective; without `labels`, the denoiser and decoder pass of a sampler's
        first step.

        Without `labels` there is no code to noise: the canvas is `noise` itself (drawn when not given, `canvas_length`
        or `max_code_length` positions), read at `timesteps` (default: the last training step, T - 1, where a canvas
        is pure noise), with no self-conditioning estimate, as sampling starts. The output then holds the decoder's
        `logits` of the x0 estimate, the `timesteps` and the states asked for, and no loss terms.

        Args:
            input_ids, attention_mask: The tokenized prompt (prompt padding is masked in every cross-attention).
            labels: Code token ids, at most `max_code_length` long. Shorter rows are padded with `pad_token_id` to
                the full canvas (or to `canvas_length`): the model learns to emit pad after the code. Positions set
                to -100 are embedded as pad and excluded from every loss term. Optional: see above.
            encoder_hidden_states: Encoded prompt, instead of `input_ids`: what [`~CodeFusionModel.encode`] returns.
            encoder_last_hidden_state: The prompt encoder's own output, before the trained projection to the model
                width, instead of `input_ids`: a frozen encoder's states cached once per dataset (see
                `add_encoder_states`).
            timesteps: `(batch_size,)` diffusion steps; drawn uniformly from [0, T) when not given.
            noise: Gaussian noise shaped like the canvas; drawn when not given.
            unconditional: `(batch_size,)` booleans: these rows' prompt encoding is replaced by `prompt_noise` over
                an unmasked prompt (phase 1's unconditional generation; prompt dropout for classifier-free
                guidance). Done here rather than by the trainer so that the encoder runs inside this forward, where
                FSDP gathers its sharded parameters.
            prompt_noise: Gaussian noise shaped like the prompt encoding; drawn when not given.
            canvas_length: Pad the labels to this many positions instead of the full canvas (`max_code_length`),
                so that a batch of short code computes fewer pad positions; the model then learns pad only that far
                past the code (see the trainer's `canvas_margin`).
            row_loss_weights: `(batch_size,)` weights of each row's terms in the loss (default 1): the importance
                weights of a non-uniform timestep sampler, which keep the loss an unbiased estimate of the uniform one.
            neighbor_code_ids, neighbor_attention_mask: The code of each row's retrieved neighbours, `(batch_size, k,
                code_length)`, and its mask, for a retrieval-augmented model (see [`~CodeFusionModel.add_neighbors`]):
                appended to the prompt encoding before an `unconditional` row's is replaced by noise (`prompt_noise`
                is then shaped like the whole memory).
            output_hidden_states, output_attentions: Also return the states / attention weights of the denoiser and
                the decoder in the pass that computes the loss (default: the config's), the attention weights computed
                by an explicit softmax, slower than the fused kernel: per stack (`denoiser_hidden_states`, ...) and
                both stacks together under transformers' names (`hidden_states`, `attentions`, `cross_attentions`).
                The prompt encoder is a transformers model of its own: call `model.encoder(...,
                output_hidden_states=True)` for its states.
            return_dict: Return a [`CodeFusionModelOutput`] (default: `config.return_dict`) rather than a tuple
                of its fields that are set.
        """
        self._check_inputs(labels, canvas_length, input_ids, encoder_hidden_states, encoder_last_hidden_state)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
        if encoder_last_hidden_state is not None:
            encoder_hidden_states = self.encoder_proj(encoder_last_hidden_state)
        elif input_ids is not None:
            encoder_hidden_states = self.encode(input_ids, attention_mask)
        length_loss = None
        if self.config.predict_length:  # from the prompt alone, as the pipeline plans its canvases
            length_loss = self._length_loss(labels, encoder_hidden_states, attention_mask, unconditional)
        if neighbor_code_ids is not None:
            encoder_hidden_states, attention_mask = self.add_neighbors(
                encoder_hidden_states, attention_mask, neighbor_code_ids, neighbor_attention_mask
            )
        if unconditional is not None:
            encoder_hidden_states, attention_mask = self._noise_prompts(
                encoder_hidden_states, attention_mask, unconditional, prompt_noise
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if labels is None:  # no code to noise: a sampler's first step (see above)
            rows = encoder_hidden_states.shape[0]
            canvas, timesteps = self._starting_canvas(rows, canvas_length, timesteps, noise)
            passes = self._canvas_passes(encoder_hidden_states, attention_mask, canvas, timesteps, None, **flags)
            output = CodeFusionModelOutput(logits=passes.logits, timesteps=timesteps, **passes.state_fields())
            return output if return_dict else output.to_tuple()
        canvas = self._noisy_canvas(labels, canvas_length, timesteps, noise)
        if self.training and self.config.draft_probability > 0 and neighbor_code_ids is not None:
            canvas = self._drafted_canvas(canvas, neighbor_code_ids[:, 0])
        if self.training and self.config.unroll_probability > 0:
            canvas = self._unrolled_canvas(canvas, encoder_hidden_states, attention_mask)
        if self.training and self.config.commit_probability > 0:
            canvas = self._committed_canvas(canvas)
        self_condition = None
        if self.config.self_condition:
            self_condition = self._self_condition(canvas, encoder_hidden_states, attention_mask)

        passes = self._canvas_passes(
            encoder_hidden_states, attention_mask, canvas.noisy_latents, canvas.timesteps, self_condition, **flags
        )

        # Each term sums over the supervised positions of the batch, each row weighted by `row_loss_weights`, and
        # divides by their count: with unit weights, the mean over every supervised position.
        row_sums = self._row_loss_sums(canvas, passes.model_output, passes.denoised_latents, passes.logits)
        positions = canvas.supervised.sum(dim=1)
        row_weights = (
            torch.ones(positions.shape, device=positions.device) if row_loss_weights is None else row_loss_weights
        )
        row_weights = row_weights.to(device=positions.device, dtype=torch.float32)
        terms = {name: (row_weights * sums).sum() / positions.sum().clamp(min=1) for name, sums in row_sums.items()}
        loss = self._weighted_loss(terms if length_loss is None else terms | {"length_loss": length_loss})
        output = CodeFusionModelOutput(
            loss=loss,
            **terms,
            length_loss=length_loss,
            logits=passes.logits,
            timesteps=canvas.timesteps,
            row_losses=self._weighted_loss(row_sums).detach() / positions.clamp(min=1),
            **passes.state_fields(),
        )
        return output if return_dict else output.to_tuple()

    def _check_inputs(
        self,
        labels: torch.LongTensor | None,
        canvas_length: int | None,
        *prompts: torch.Tensor | None,
    ) -> None:
        """Refuse what the model cannot read: labels or canvas_length off the canvas, not one form of prompt."""
        if labels is not None and labels.shape[1] > self.config.max_code_length:
            raise ValueError(
                f"labels have {labels.shape[1]} positions but the canvas holds max_code_length="
                f"{self.config.max_code_length}: truncate the code when tokenizing."
            )
        shortest = 1 if labels is None else labels.shape[1]
        if canvas_length is not None and not shortest <= canvas_length <= self.config.max_code_length:
            raise ValueError(
                f"canvas_length={canvas_length} must lie between "
                + ("1" if labels is None else f"the labels' {shortest} positions")
                + f" and max_code_length={self.config.max_code_length}."
            )
        if sum(prompt is not None for prompt in prompts) != 1:
            raise ValueError(
                "Pass exactly one of input_ids, encoder_hidden_states, encoder_last_hidden_state (the prompt, in one "
                "of its forms)."
            )

    def _noise_prompts(
        self,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        unconditional: torch.BoolTensor,
        prompt_noise: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unconditional prompt for the `unconditional` rows: the mode phase 1 trains and guidance uses."""
        if prompt_noise is None:
            prompt_noise = torch.randn_like(encoder_hidden_states)
        noise_states, noise_mask = self.unconditional_prompt(prompt_noise.to(encoder_hidden_states), attention_mask)
        rows = unconditional.to(encoder_hidden_states.device)
        encoder_hidden_states = torch.where(rows[:, None, None], noise_states, encoder_hidden_states)
        if attention_mask is not None:
            attention_mask = torch.where(rows[:, None], noise_mask, attention_mask)
        return encoder_hidden_states, attention_mask

    def _noisy_canvas(
        self,
        labels: torch.LongTensor,
        canvas_length: int | None,
        timesteps: torch.LongTensor | None,
        noise: torch.Tensor | None,
    ) -> _TrainingCanvas:
        """The labels padded, embedded and noised (timesteps and noise drawn if not given): the paper's x_t."""
        canvas_length = self.config.max_code_length if canvas_length is None else canvas_length
        labels = F.pad(labels, (0, canvas_length - labels.shape[1]), value=self.config.pad_token_id)
        supervised = labels != -100
        clean_latents = self.embed_code(labels.masked_fill(~supervised, self.config.pad_token_id))
        if timesteps is None:
            timesteps = torch.randint(0, self.config.num_train_timesteps, (labels.shape[0],), device=labels.device)
        if noise is None:
            noise = torch.randn_like(clean_latents)
        return _TrainingCanvas(
            labels=labels,
            supervised=supervised,
            clean_latents=clean_latents,
            noise=noise,
            timesteps=timesteps,
            noisy_latents=self.noise_scheduler.add_noise(clean_latents, noise, timesteps),
            target=clean_latents if self.config.prediction_type == "sample" else noise,
        )

    def _starting_canvas(
        self,
        batch_size: int,
        canvas_length: int | None,
        timesteps: torch.LongTensor | None,
        noise: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """Without labels, the canvas a sampler starts from and its timesteps: `noise` (drawn if not given) at
        `timesteps` (by default the last training step, where a canvas is pure noise)."""
        config, weight = self.config, self.code_embedding.weight
        if noise is None:
            shape = (batch_size, config.max_code_length if canvas_length is None else canvas_length, config.latent_dim)
            noise = torch.randn(shape, device=weight.device, dtype=weight.dtype)
        length = noise.shape[1] if canvas_length is None and noise.ndim == 3 else canvas_length
        if noise.shape != (batch_size, length, config.latent_dim) or length > config.max_code_length:
            positions = f"canvas_length={canvas_length}" if canvas_length else f"<= {config.max_code_length} positions"
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}, but without labels it is the canvas: "
                f"(batch_size={batch_size}, {positions}, latent_dim={config.latent_dim})."
            )
        if timesteps is None:
            timesteps = torch.full((batch_size,), config.num_train_timesteps - 1, device=noise.device)
        return noise, timesteps

    def _unrolled_canvas(
        self, canvas: _TrainingCanvas, encoder_hidden_states: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> _TrainingCanvas:
        """Some rows unrolled from the model's own drafts (`_unroll`): training then sees canvases as sampling does."""
        noisy_latents, unrolled = self._unroll(
            canvas.noisy_latents, canvas.clean_latents, canvas.timesteps, encoder_hidden_states, attention_mask
        )
        target = canvas.target
        if self.config.prediction_type == "epsilon":
            # An unrolled canvas was noised from a draft, not from `noise`: its target is the noise that separates it
            # from the reference.
            implied_noise = self.noise_scheduler.predict_noise(canvas.clean_latents, canvas.timesteps, noisy_latents)
            target = torch.where(unrolled[:, None, None], implied_noise, canvas.noise)
        return replace(canvas, noisy_latents=noisy_latents, target=target)

    def _drafted_canvas(self, canvas: _TrainingCanvas, draft_ids: torch.LongTensor) -> _TrainingCanvas:
        """Some rows (`config.draft_probability`) noised from a retrieved draft, `draft_ids` (their nearest
        neighbour's code), instead of from their own code, towards the same targets."""
        batch_size, canvas_length = canvas.labels.shape
        drafted = torch.rand(batch_size, device=draft_ids.device) < self.config.draft_probability
        padding = (0, max(0, canvas_length - draft_ids.shape[1]))  # the neighbours are padded with pad already
        draft_ids = F.pad(draft_ids[:, :canvas_length], padding, value=self.config.pad_token_id)
        drafts = self.embed_code(draft_ids.to(canvas.labels.device))
        noisy_drafts = self.noise_scheduler.add_noise(drafts, canvas.noise, canvas.timesteps)
        noisy_latents = torch.where(drafted[:, None, None], noisy_drafts, canvas.noisy_latents)
        target = canvas.target
        if self.config.prediction_type == "epsilon":  # the noise that separates the drafted canvas from the reference
            implied_noise = self.noise_scheduler.predict_noise(canvas.clean_latents, canvas.timesteps, noisy_latents)
            target = torch.where(drafted[:, None, None], implied_noise, canvas.noise)
        return replace(canvas, noisy_latents=noisy_latents, target=target)

    def _committed_canvas(self, canvas: _TrainingCanvas) -> _TrainingCanvas:
        """Positions committed as a committing sampler leaves them (`_commit`); only the noisy ones are learned."""
        noisy_latents, timesteps, committed = self._commit(
            canvas.noisy_latents, canvas.clean_latents, canvas.noise, canvas.timesteps
        )
        return replace(
            canvas,
            noisy_latents=noisy_latents,
            timesteps=timesteps,
            supervised=canvas.supervised & ~committed,
            labels=canvas.labels.masked_fill(committed, -100),
        )

    def _self_condition(
        self, canvas: _TrainingCanvas, encoder_hidden_states: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The x0 estimate a sampler carries over from its previous step, which self-conditioning reads."""
        # Training conditions a random share of the rows and gives the others zeros, as a sampler's first step does;
        # evaluation conditions every row, so its losses do not depend on a random draw.
        batch_size, device = canvas.labels.shape[0], canvas.labels.device
        rows = torch.ones(batch_size, dtype=torch.bool, device=device)
        if self.training:
            rows = torch.rand(batch_size, device=device) < self.config.self_condition_probability
        self_condition = torch.zeros_like(canvas.noisy_latents)
        # A gradient-free pass over those rows only. It runs even for no rows: under FSDP every process must run the
        # same layers.
        with torch.no_grad():
            states, mask = encoder_hidden_states[rows], _rows(attention_mask, rows)
            estimate = self._clipped_estimate(canvas.noisy_latents[rows], canvas.timesteps[rows], states, mask)
            estimate = self.round_estimate(estimate, self.config.self_condition_rounding, states, mask)
        self_condition[rows] = estimate.to(self_condition.dtype)
        return self_condition

    def _canvas_passes(
        self,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        self_condition: torch.Tensor | None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> _CanvasPasses:
        """Over the prompt: the denoiser over the noisy canvas, its x0 estimate D_s and the decoder over D_s, with
        the states asked for."""
        flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
        denoiser_states = self._denoiser_states(
            noisy_latents, timesteps, encoder_hidden_states, attention_mask, self_condition, **flags
        )
        model_output = self.denoiser_out(denoiser_states.last_hidden_state)
        denoised_latents = self.noise_scheduler.predict_original_sample(model_output, timesteps, noisy_latents)
        decoder_states = self.decoder(denoised_latents, encoder_hidden_states, _padding_mask(attention_mask), **flags)
        logits = self.lm_head(decoder_states.last_hidden_state)
        return _CanvasPasses(denoiser_states, model_output, denoised_latents, decoder_states, logits)

    def _row_loss_sums(
        self,
        canvas: _TrainingCanvas,
        model_output: torch.Tensor,
        denoised_latents: torch.Tensor,
        logits: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Each row's sums of the paper's three terms: the batch's terms and each row's own loss come from them."""
        mask = canvas.supervised.unsqueeze(-1).to(model_output.dtype)
        latent_dim = self.config.latent_dim
        return {
            "noise_loss": ((model_output - canvas.target) ** 2 * mask).sum(dim=(1, 2)).float() / latent_dim,
            "embedding_loss": ((denoised_latents - canvas.clean_latents) ** 2 * mask).sum(dim=(1, 2)).float()
            / latent_dim,
            "decoder_loss": F.cross_entropy(
                logits.flatten(0, 1).float(), canvas.labels.flatten(), ignore_index=-100, reduction="none"
            )
            .view(canvas.labels.shape)
            .sum(dim=1),
        }

    def _weighted_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The terms weighted by the config's `<term>_weight`: one place for the weights of the loss and row losses."""
        names = list(terms)
        loss = getattr(self.config, f"{names[0]}_weight") * terms[names[0]]
        for name in names[1:]:
            loss = loss + getattr(self.config, f"{name}_weight") * terms[name]
        return loss

    def _length_loss(
        self,
        labels: torch.LongTensor | None,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        unconditional: torch.BoolTensor | None,
    ) -> torch.Tensor | None:
        """Cross-entropy of the length head against each row's code length: up to its last position that is neither
        pad nor -100 (labels padded either way count only their code). None without labels: no length to learn."""
        if labels is None:
            return None
        is_code = (labels != self.config.pad_token_id) & (labels != -100)
        positions = torch.arange(1, labels.shape[1] + 1, device=labels.device)
        lengths = (positions * is_code).max(dim=1).values
        losses = F.cross_entropy(
            self.length_logits(encoder_hidden_states, attention_mask).float(), lengths, reduction="none"
        )
        if unconditional is None:
            return losses.mean()
        conditioned = ~unconditional.to(labels.device)
        return (losses * conditioned).sum() / conditioned.sum().clamp(min=1)

    def _clipped_estimate(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The clipped x0 estimate of a denoiser pass without self-conditioning, as a sampler's first step reads it:
        what the gradient-free passes of self-conditioning and unrolling hand on."""
        model_output = self.denoise(noisy_latents, timesteps, encoder_hidden_states, attention_mask)
        return self.noise_scheduler.estimate_original_sample(model_output, timesteps, noisy_latents)

    @torch.no_grad()
    def _unroll(
        self,
        noisy_latents: torch.Tensor,
        clean_latents: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unrolled denoising (`config.unroll_probability`): for a random share of rows, the canvas at t becomes a DDIM
        step to t from the model's decoder-rounded x0 estimate at a uniform higher step, as in sampling. In training
        the denoiser otherwise only sees noised references, never its own mistakes. Returns the canvas and the
        unrolled rows."""
        last = self.config.num_train_timesteps - 1
        unroll = (torch.rand(timesteps.shape, device=timesteps.device) < self.config.unroll_probability) & (
            timesteps < last
        )
        # The gradient-free passes run on the unrolled rows only, even when there are none: under FSDP every process
        # must run the same layers.
        states, mask = encoder_hidden_states[unroll], _rows(attention_mask, unroll)
        rows_timesteps, clean_rows = timesteps[unroll], clean_latents[unroll]
        higher = (
            rows_timesteps
            + 1
            + (torch.rand(rows_timesteps.shape, device=timesteps.device) * (last - rows_timesteps)).long()
        )
        start = self.noise_scheduler.add_noise(clean_rows, torch.randn_like(clean_rows), higher)
        estimate = self._clipped_estimate(start, higher, states, mask)
        # In the canvas's dtype: under autocast the passes run in half precision, the DDIM step should not.
        draft = self.round_estimate(estimate, "decoder", states, mask).to(noisy_latents.dtype)
        stepped = self.noise_scheduler.add_noise(
            draft, self.noise_scheduler.predict_noise(draft, higher, start), rows_timesteps
        )
        noisy_latents = noisy_latents.clone()
        noisy_latents[unroll] = stepped
        return noisy_latents, unroll

    def _commit(
        self, noisy_latents: torch.Tensor, clean_latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Committed positions (`config.commit_probability`): in a random share of rows, each position is committed
        (left at t = 0, its reference token almost clean) with a probability drawn per row from U(0, 1), as
        mask-predict leaves a random number of tokens unmasked. Returns the canvas, the per-position timesteps and
        the committed positions."""
        batch_size, canvas_length = clean_latents.shape[:2]
        device = clean_latents.device
        rows = torch.rand(batch_size, 1, device=device) < self.config.commit_probability
        share = torch.rand(batch_size, 1, device=device)
        committed = rows & (torch.rand(batch_size, canvas_length, device=device) < share)
        # One random position per row stays noisy, so no row is left entirely committed.
        committed &= ~F.one_hot(torch.randint(canvas_length, (batch_size,), device=device), canvas_length).bool()
        position_timesteps = timesteps[:, None].expand(batch_size, canvas_length).masked_fill(committed, 0)
        almost_clean = self.noise_scheduler.add_noise(clean_latents, noise, torch.zeros_like(timesteps))
        canvas = torch.where(committed[..., None], almost_clean, noisy_latents)
        return canvas, position_timesteps, committed


def _rows(attention_mask: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    """The attention mask of some rows (no mask stays no mask)."""
    return None if attention_mask is None else attention_mask[rows]


def _padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """HF attention mask (1 = attend) to torch's key padding mask (True = ignore)."""
    return None if attention_mask is None else attention_mask == 0


CodeFusionModel.register_for_auto_class("AutoModel")
AutoModel.register(CodeFusionConfig, CodeFusionModel, exist_ok=True)

__all__ = ["CodeFusionModel", "CodeFusionModelOutput", "CodeFusionPreTrainedModel", "CodeFusionPromptCache"]
