"""CodeFusion model configuration."""

import os
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import CONFIG_NAME

from .constants import DECODER_ROUNDINGS, SPECIAL_TOKEN_IDS
from .scheduling_codefusion import NOISE_SCHEDULES, PREDICTION_TYPES

# Each preset is a set of `CodeFusionConfig` fields; "encoder_config" holds the encoder's own fields.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper: CodeT5-small encoder (d=512), 10 denoiser and 6 decoder layers, a 128-token canvas, T=1200.
    "paper": {
        "encoder_config": {"model_type": "t5", "vocab_size": 32100, "d_model": 512, "d_ff": 2048, "num_layers": 6},
        "vocab_size": 32100,
        "latent_dim": 512,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_attention_heads": 8,
        "num_denoiser_layers": 10,
        "num_decoder_layers": 6,
        "max_code_length": 128,
        "max_prompt_length": 128,
    },
    # Trainable on 2 CPU cores: a 64-token canvas covers 99% of NL2Bash; a 128-dim latent trained best at this size.
    "small": {
        "encoder_config": {
            "model_type": "t5",
            "vocab_size": 8000,
            "d_model": 256,
            "d_kv": 32,
            "d_ff": 1024,
            "num_layers": 3,
            "num_heads": 8,
        },
        "vocab_size": 8000,
        "latent_dim": 128,
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_attention_heads": 4,
        "num_denoiser_layers": 4,
        "num_decoder_layers": 2,
        "max_code_length": 64,
        "max_prompt_length": 64,
    },
    # For tests: builds and runs a training step in milliseconds.
    "tiny": {
        "encoder_config": {
            "model_type": "t5",
            "vocab_size": 320,
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 64,
            "num_layers": 1,
            "num_heads": 2,
        },
        "vocab_size": 320,
        "latent_dim": 16,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_denoiser_layers": 1,
        "num_decoder_layers": 1,
        "max_code_length": 16,
        "max_prompt_length": 16,
        "num_train_timesteps": 100,
    },
}


@strict
class CodeFusionConfig(PreTrainedConfig):
    r"""
    Configuration of a [`CodeFusionModel`]: a prompt encoder, a denoiser over a canvas of continuous code
    embeddings and a decoder with a classification head over the code vocabulary (Singh et al., EMNLP 2023).

    Args:
        encoder_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the prompt encoder. Defaults to a CodeT5-small-sized `T5Config`; any transformers encoder
            config (e.g. a `BertConfig`) works.
        vocab_size (`int`): Size of the code vocabulary (the code tokenizer's `len()`).
        pad_token_id, bos_token_id, eos_token_id, mask_token_id (`int`): Special ids of the code tokenizer.
            Generation stops at the first pad or eos. The bos and mask ids are recorded for tools that read the
            config; CPD pre-training masks the encoder's input with the prompt tokenizer's own mask token.
        latent_dim (`int`): Size of the continuous code embedding in which diffusion happens.
        hidden_size, intermediate_size, num_attention_heads (`int`): Width of the denoiser and decoder layers.
        num_denoiser_layers, num_decoder_layers (`int`): Depth of the denoiser (paper: 10) and decoder (paper: 6).
        dropout (`float`): Dropout in the denoiser and decoder.
        max_code_length (`int`): Length of the code canvas (paper: 128). Code is padded to it with `pad_token_id`.
        max_prompt_length (`int`): Longest tokenized prompt; longer prompts are truncated.
        num_train_timesteps (`int`): Diffusion steps T (paper: 1200).
        noise_schedule (`str`): `"sqrt"` (paper, from Diffusion-LM), `"linear"` or `"cosine"`.
        prediction_type (`str`): What the denoiser predicts: `"epsilon"` (paper) or `"sample"` (x0).
        self_condition (`bool`): Self-conditioning (Chen et al., 2022, "Analog Bits"; used by CDCD and
            DiffuSeq-v2): the denoiser also reads its previous x0 estimate. Not in the paper; off by default.
        self_condition_probability (`float`): In training, the share of rows that get a self-conditioning estimate
            (made by a gradient-free first pass); the others get zeros, as the first sampling step does. Evaluation
            gives every row the estimate, so its losses do not depend on a random draw.
        self_condition_rounding (`str`): Round that training estimate through the decoder, `"decoder"` (its most
            likely tokens) or `"decoder_mean"`, so the denoiser learns to correct the crisp drafts a sampler with the
            same `rounding` hands it; also the pipeline's default `rounding`. Not in the paper; `"none"` by default
            (`None`, as configs saved by earlier versions say, is read as `"none"`).
        unroll_probability (`float`): In training, the share of rows whose noisy canvas is made as the sampler
            makes it: one DDIM step down to the row's timestep from the model's own decoder-rounded x0 estimate at a
            random higher noise level, instead of from the reference (SUNDAE's unrolled denoising, Savinov et al.,
            2022). The targets stay the reference, so the denoiser learns to correct its drafts. Costs one
            gradient-free denoiser and decoder pass. Not in the paper; 0 (off) by default.
        commit_probability (`float`): In training, the share of rows in which a random subset of positions is
            committed: left at t = 0 (their reference tokens, almost clean) while the rest is noised to the row's
            timestep, and only the noised positions are learned. Teaches the denoiser to complete a partly committed
            canvas, as mask-predict (Ghazvininejad et al., 2019) does, for the pipeline's `commit` sampling. Not in
            the paper; 0 (off) by default.
        predict_length (`bool`): A length head on the mean of the prompt encoding predicts the code's token count,
            trained with the other terms (Mask-Predict's length prediction, Ghazvininejad et al., 2019), so that
            sampling runs on a canvas of the predicted length plus `canvas_margin` instead of the whole canvas: the
            canvas a model trained on trimmed canvases saw, at a fraction of the cost. Not in the paper; off by
            default.
        length_loss_weight (`float`): Weight of the length head's cross-entropy in the loss (Mask-Predict: 0.1).
        canvas_margin (`int`, *optional*): Pad positions after the longest code of a batch that training computed
            (the trainer's `canvas_margin`, recorded in the config when training starts); a canvas for a predicted
            length is that length plus this margin. None: trained on the whole canvas.
        num_neighbors (`int`): Retrieval augmentation (REDCODER, DocPrompting; not in the paper): the model reads the
            code of this many retrieved training pairs nearest the prompt (the pipeline's `retriever`), appended to
            the prompt encoding that every cross-attention reads. Each neighbour's code goes through the code
            embedding, case-preserving where a prompt encoder may lowercase, with a neighbour and a position
            embedding. Training retrieves them leave-one-out. 0 (default): none.
        draft_probability (`float`): With `num_neighbors`, the share of training rows whose noisy canvas is made
            from their nearest neighbour's code instead of their own (TM-LevT, DiffusER: an editor learns to edit
            drafts only when trained from them), at the row's timestep; the targets stay the row's own code, so the
            denoiser learns to move a retrieved draft towards the reference, as sampling from `init_code` asks of it.
            0 (default): off.
        min_train_timestep (`int`): The smallest timestep training drew (the trainer's `min_train_timestep`,
            DINOISER's clip, recorded when training starts): the pipeline places its steps at or above it, where the
            model was trained. 0: every timestep (the paper).
        noise_loss_weight, embedding_loss_weight, decoder_loss_weight (`float`): Weights of the three loss terms
            `||eps_hat - eps||`, `||D_s - L(y)||` and `-log p(y | D_s)`.
        code_embedding_init_std (`float`): Initial std of the code embedding; 1.0 puts it on the scale of the noise.
        normalize_code_embeddings (`bool`): Rescale every code embedding to norm `sqrt(latent_dim)` (unit variance
            per dimension). Learned embeddings otherwise shrink to make the regression terms easy (collapse).
        initializer_range (`float`): Std of the other weights at initialisation.
        code_vocabulary_sha256 (`str`, *optional*): The sha256 of the code tokenizer's token-to-id map
            (`vocabulary_sha256`), recorded when a pipeline is saved; loading the pipeline checks that its tokenizer
            still has that vocabulary (a tokenizer.json with two ids swapped would decode those tokens wrong in
            silence). None: not checked.
    """

    model_type = "codefusion"
    sub_configs_defaults = {
        "encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="t5", init_kwargs={"vocab_size": 32100})
    }

    encoder_config: dict | PreTrainedConfig | None = None
    vocab_size: int = 32100
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    mask_token_id: int = 4
    latent_dim: int = 512
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    num_denoiser_layers: int = 10
    num_decoder_layers: int = 6
    dropout: float = 0.1
    max_code_length: int = 128
    max_prompt_length: int = 128
    num_train_timesteps: int = 1200
    noise_schedule: str = "sqrt"
    prediction_type: str = "epsilon"
    self_condition: bool = False
    self_condition_probability: float = 0.5
    self_condition_rounding: str = "none"
    unroll_probability: float = 0.0
    commit_probability: float = 0.0
    predict_length: bool = False
    length_loss_weight: float = 0.1
    canvas_margin: int | None = None
    num_neighbors: int = 0
    draft_probability: float = 0.0
    min_train_timestep: int = 0
    noise_loss_weight: float = 1.0
    embedding_loss_weight: float = 1.0
    decoder_loss_weight: float = 1.0
    code_embedding_init_std: float = 1.0
    normalize_code_embeddings: bool = False
    initializer_range: float = 0.02
    code_vocabulary_sha256: str | None = None

    def __post_init__(self, **kwargs):
        # transformers turns a dtype name into `getattr(torch, name)`: a wrong one would be an AttributeError of torch.
        if (
            isinstance(self.dtype, str)
            and self.dtype != "auto"
            and not isinstance(getattr(torch, self.dtype, None), torch.dtype)
        ):
            raise ValueError(f"dtype must name a torch dtype (e.g. 'float32', 'bfloat16'), got {self.dtype!r}.")
        super().__post_init__(**kwargs)
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {self.noise_schedule!r}.")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}.")
        if not 0 <= self.self_condition_probability <= 1:
            raise ValueError(f"self_condition_probability must be in [0, 1], got {self.self_condition_probability}.")
        if not 0 <= self.unroll_probability <= 1:
            raise ValueError(f"unroll_probability must be in [0, 1], got {self.unroll_probability}.")
        if not 0 <= self.commit_probability <= 1:
            raise ValueError(f"commit_probability must be in [0, 1], got {self.commit_probability}.")
        if self.length_loss_weight < 0:
            raise ValueError(f"length_loss_weight must be at least 0, got {self.length_loss_weight}.")
        if self.canvas_margin is not None and self.canvas_margin < 0:
            raise ValueError(f"canvas_margin must be None or at least 0, got {self.canvas_margin}.")
        if isinstance(self.num_neighbors, bool) or not isinstance(self.num_neighbors, int) or self.num_neighbors < 0:
            raise ValueError(f"num_neighbors must be a whole number of at least 0, got {self.num_neighbors!r}.")
        if not 0 <= self.draft_probability <= 1:
            raise ValueError(f"draft_probability must be in [0, 1], got {self.draft_probability}.")
        if self.draft_probability > 0 and not self.num_neighbors:
            raise ValueError("draft_probability starts canvases from retrieved neighbours: set num_neighbors too.")
        if not 0 <= self.min_train_timestep < self.num_train_timesteps:
            raise ValueError(
                f"min_train_timestep must be in [0, num_train_timesteps={self.num_train_timesteps}), "
                f"got {self.min_train_timestep}."
            )
        if self.self_condition_rounding is None:
            self.self_condition_rounding = "none"
        if self.self_condition_rounding != "none":
            if self.self_condition_rounding not in DECODER_ROUNDINGS:
                raise ValueError(
                    f"self_condition_rounding must be 'none' or one of {DECODER_ROUNDINGS}, got "
                    f"{self.self_condition_rounding!r}."
                )
            if not self.self_condition:
                raise ValueError("self_condition_rounding needs self_condition=True: it rounds that estimate.")
        positive = ("vocab_size", "latent_dim", "hidden_size", "intermediate_size", "num_attention_heads")
        positive += ("num_denoiser_layers", "max_code_length", "max_prompt_length", "num_train_timesteps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.num_decoder_layers < 0:
            raise ValueError(f"num_decoder_layers must be at least 0, got {self.num_decoder_layers}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        # transformers only warns about these; an id past the vocabulary fails at the first pad or eos, or not at all.
        for name in SPECIAL_TOKEN_IDS:
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(
                    f"{name}={getattr(self, name)} is outside the code vocabulary (vocab_size={self.vocab_size}, "
                    f"ids 0 to {self.vocab_size - 1}): set it to the code tokenizer's id of that token."
                )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "CodeFusionConfig":
        """As transformers', but a config.json whose values do not make a valid config (a wrong JSON type, a size or
        id out of range) raises a `ValueError` naming the file and the key, not an error from deep inside."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (ValueError, TypeError, StrictDataclassError) as error:
            path = str(pretrained_model_name_or_path)
            if not os.path.isfile(path):
                path = os.path.join(path, kwargs.get("subfolder") or "", CONFIG_NAME)
            raise ValueError(f"{path} is not a valid CodeFusion config: {error}") from error

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "CodeFusionConfig":
        """Build a config from a named preset (`"paper"`, `"small"` or `"tiny"`), overriding any field.

        `encoder_config` may be given as a config (e.g. a pretrained encoder's), replacing the preset's encoder, or
        as a dict of fields merged into it. When the encoder is the preset's own (a T5 encoder sharing the code
        tokenizer), overriding `vocab_size` resizes the encoder's vocabulary with it.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}: choose one of {sorted(PRESETS)}.")
        fields = {key: value for key, value in PRESETS[name].items() if key != "encoder_config"}
        encoder_fields = dict(PRESETS[name]["encoder_config"])
        encoder_override = overrides.pop("encoder_config", None)
        fields.update(overrides)
        if isinstance(encoder_override, PreTrainedConfig):
            encoder_config = encoder_override
        else:
            if "vocab_size" in overrides:
                encoder_fields["vocab_size"] = overrides["vocab_size"]
            encoder_fields.update(encoder_override or {})
            encoder_config = AutoConfig.for_model(**encoder_fields)
        return cls(encoder_config=encoder_config, **fields)


CodeFusionConfig.register_for_auto_class()
AutoConfig.register("codefusion", CodeFusionConfig, exist_ok=True)

__all__ = ["CodeFusionConfig"]
