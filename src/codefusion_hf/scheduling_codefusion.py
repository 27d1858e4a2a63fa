"""Noise scheduler for diffusion over continuous code embeddings (CodeFusion, Diffusion-LM, GENIE)."""

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import SchedulerMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import betas_for_alpha_bar
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

NOISE_SCHEDULES = ("sqrt", "linear", "cosine")
TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")
PREDICTION_TYPES = ("epsilon", "sample")


@dataclass
class CodeFusionSchedulerOutput(BaseOutput):
    """
    Args:
        prev_sample (`torch.Tensor` of shape `(batch_size, canvas_length, latent_dim)`):
            The less noisy canvas x_{t-1}, input of the next denoising step.
        pred_original_sample (`torch.Tensor` of the same shape):
            The x0 estimate of this step (after clipping or snapping), what the decoder reads.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def sqrt_betas(num_train_timesteps: int, offset: float = 1e-4, max_beta: float = 0.999) -> torch.Tensor:
    """Diffusion-LM's "sqrt" schedule, alpha_bar(t) = 1 - sqrt(t / T + offset), discretised into betas."""
    alpha_bar = 1 - torch.sqrt(
        torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps + offset
    )
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta).float()


class CodeFusionScheduler(SchedulerMixin, ConfigMixin):
    """
    DDPM/DDIM sampler for embedding diffusion. `eta=1` in [`~CodeFusionScheduler.step`] gives ancestral (DDPM)
    sampling, `eta=0` deterministic DDIM; both work with any number of inference steps from 1 to T.

    The x0 estimate is clipped to `[-clip_sample_range, clip_sample_range]`, not the image schedulers' [-1, 1]: token
    embeddings live on their own scale, and the clip should be a few times their spread (the default 3.0 suits the
    unit-scale initial embeddings). Without any clip, an epsilon-predicting model's x0 estimate at high noise is its
    noise error magnified many times, and samples collapse. `step` can also move towards a rounded x0 estimate
    (`pred_original_sample`, see `CodeFusionModel.round_estimate`); the noise is then recomputed from it so the update
    stays consistent.

    Args:
        num_train_timesteps (`int`, defaults to 1200): Diffusion steps T the model was trained with (paper: 1200).
        noise_schedule (`str`, defaults to `"sqrt"`): `"sqrt"` (paper), `"linear"` or `"cosine"`.
        beta_start, beta_end (`float`): Range of the `"linear"` schedule.
        prediction_type (`str`, defaults to `"epsilon"`): What the model predicts, noise (paper) or x0 (`"sample"`).
        timestep_spacing (`str`, defaults to `"trailing"`): How inference steps are placed. `"trailing"` always
            starts at t = T - 1 (pure noise), which matters because the model never sees a cleaner start.
        clip_sample (`bool`, defaults to `True`): Clip the x0 estimate to `clip_sample_range`.
        clip_sample_range (`float`, defaults to 3.0): Bound of that clip, in embedding units.
        trained_betas (`list[float]`, *optional*): The betas themselves, one per training step, instead of a
            `noise_schedule` (as diffusers' schedulers take them).
    """

    order = 1
    # Whether `step` commits the decoder's tokens: it then reads the decoder's `logits` (or `logits_at`), the
    # `code_embeddings` and each row's `canvas_lengths`, has no `eta`, and its output holds the committed tokens.
    # The one fact a pipeline asks of a scheduler to know how to call it.
    commits_tokens = False
    # The starting canvas is unit Gaussian noise, and the denoiser reads the canvas unscaled (see
    # `scale_model_input`): what diffusers' pipelines expect of a scheduler.
    init_noise_sigma = 1.0

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ):
        """As diffusers', but a value `__init__` refuses names the scheduler_config.json that holds it."""
        try:
            return super().from_pretrained(
                pretrained_model_name_or_path, subfolder=subfolder, return_unused_kwargs=return_unused_kwargs, **kwargs
            )
        except ValueError as error:
            config_file = os.path.join(str(pretrained_model_name_or_path), subfolder or "", cls.config_name)
            if not os.path.isfile(config_file):
                raise
            raise ValueError(f"{config_file}: {error} Fix that value in the file.") from None

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1200,
        noise_schedule: str = "sqrt",
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "trailing",
        clip_sample: bool = True,
        clip_sample_range: float = 3.0,
        trained_betas: list[float] | None = None,
    ):
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be at least 1, got {num_train_timesteps}.")
        if noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {noise_schedule!r}.")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}.")
        if clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be positive, got {clip_sample_range}.")

        if trained_betas is not None:
            if len(trained_betas) != num_train_timesteps:
                raise ValueError(
                    f"trained_betas has {len(trained_betas)} values but num_train_timesteps is {num_train_timesteps}."
                )
            self.betas = torch.tensor(trained_betas, dtype=torch.float32)
            if not ((self.betas > 0) & (self.betas < 1)).all():
                raise ValueError("trained_betas must all lie in (0, 1).")
        elif noise_schedule == "sqrt":
            self.betas = sqrt_betas(num_train_timesteps)
        elif noise_schedule == "linear":
            self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        else:
            self.betas = betas_for_alpha_bar(num_train_timesteps, alpha_transform_type="cosine")
        # Floored so that a schedule whose signal vanishes (e.g. linear betas up to 0.2) never divides by zero; the
        # schedules above never come near the floor.
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0).clamp(min=1e-12)
        self.num_inference_steps = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
        min_timestep: int = 0,
    ) -> None:
        """Sample on the [`timestep_schedule`] of these arguments."""
        self.timesteps = self.timestep_schedule(num_inference_steps, timesteps, min_timestep).to(device)
        self.num_inference_steps = len(self.timesteps)

    def timestep_schedule(
        self, num_inference_steps: int | None = None, timesteps: list[int] | None = None, min_timestep: int = 0
    ) -> torch.LongTensor:
        """`num_inference_steps` strictly decreasing timesteps out of the T training steps, placed by
        `timestep_spacing` within `[min_timestep, T)` (a model trained only there, `config.min_train_timestep`, is
        sampled there); or `timesteps` as given (strictly decreasing, each in [0, T)), e.g. to start sampling from a
        partly noised canvas. Checked, and without changing the scheduler: a pipeline plans its steps first."""
        num_train_timesteps = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("Pass exactly one of num_inference_steps and timesteps.")
        if timesteps is not None:
            timesteps = [int(t) for t in timesteps]
            if not timesteps or any(later >= earlier for earlier, later in zip(timesteps, timesteps[1:])):
                raise ValueError(f"timesteps must be a non-empty, strictly decreasing list, got {timesteps}.")
            if timesteps[-1] < 0 or timesteps[0] >= num_train_timesteps:
                raise ValueError(f"timesteps must lie in [0, {num_train_timesteps}), got {timesteps}.")
            return torch.tensor(timesteps, dtype=torch.int64)
        if not 0 <= min_timestep < num_train_timesteps:
            raise ValueError(f"min_timestep must be in [0, {num_train_timesteps}), got {min_timestep}.")
        span = num_train_timesteps - min_timestep  # the timesteps to place the steps among
        if not 1 <= num_inference_steps <= span:
            raise ValueError(
                f"num_inference_steps must be between 1 and {span} (num_train_timesteps={num_train_timesteps} minus "
                f"min_timestep={min_timestep}), got {num_inference_steps}."
            )
        if self.config.timestep_spacing == "trailing":
            # Integer arithmetic: the float stride of diffusers' `arange(T, 0, -T / n)` can yield n + 1 steps, the
            # last one negative (T = 1200, n = 7 ends at t = -1, which indexes the noisiest alpha_bar).
            spaced = span * np.arange(num_inference_steps, 0, -1) // num_inference_steps - 1
        elif self.config.timestep_spacing == "leading":
            spaced = np.arange(num_inference_steps)[::-1] * (span // num_inference_steps)
        else:
            spaced = np.linspace(0, span - 1, num_inference_steps).round()[::-1]
        return torch.from_numpy((min_timestep + spaced).astype(np.int64))

    def check_same_schedule(self, trained: "CodeFusionScheduler") -> None:
        """Refuse to sample on another noise schedule than the `trained` one (the model's `noise_scheduler`): the
        named fields first, then the noise levels themselves, since another `beta_start`, `beta_end` or
        `trained_betas` (an edited scheduler_config.json) also samples on untrained noise levels."""
        for name in ("num_train_timesteps", "noise_schedule", "prediction_type"):
            if self.config[name] != trained.config[name]:
                raise ValueError(
                    f"scheduler.config.{name}={self.config[name]!r} does not match the model's "
                    f"{name}={trained.config[name]!r}: sample with the schedule the model was trained with."
                )
        alphas_cumprod = self.alphas_cumprod.to(trained.alphas_cumprod.device)
        if torch.allclose(alphas_cumprod, trained.alphas_cumprod, rtol=1e-5, atol=1e-8):
            return

        def shown(value: Any) -> str:
            return f"<{len(value)} values>" if isinstance(value, (list, tuple)) else repr(value)

        differing = [
            f"scheduler.config.{name}={shown(self.config.get(name))} but the model's is {shown(trained.config[name])}"
            for name in ("trained_betas", "beta_start", "beta_end")
            if self.config.get(name) != trained.config[name]
        ]
        largest = (alphas_cumprod - trained.alphas_cumprod).abs().max().item()
        raise ValueError(
            f"scheduler.alphas_cumprod differs from the model's training schedule by up to {largest:.3g} "
            f"({'; '.join(differing) or 'its betas differ'}): sample with the schedule the model was trained with, "
            f"built by {type(self).__name__}.from_config(model.noise_scheduler.config)."
        )

    def scale_model_input(self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser reads the canvas as it is: the identity, for pipelines written against diffusers'
        scheduler interface."""
        return sample

    def _alpha_bar(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar(t) of each timestep (one for all, one per row, or one per canvas position), shaped to broadcast
        over `like`."""
        alpha_bar = self.alphas_cumprod.to(device=like.device)[timesteps.to(like.device)].to(like.dtype)
        return alpha_bar.reshape(*alpha_bar.shape, *([1] * (like.ndim - alpha_bar.ndim)))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), one timestep per row (or
        per canvas position)."""
        alpha_bar = self._alpha_bar(timesteps, original_samples)
        return alpha_bar.sqrt() * original_samples + (1 - alpha_bar).sqrt() * noise

    def predict_original_sample(
        self, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """The x0 estimate implied by the model output at `timesteps` (one for all, per row or per position)."""
        if self.config.prediction_type == "sample":
            return model_output
        alpha_bar = self._alpha_bar(timesteps, sample)
        return (sample - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()

    def predict_noise(
        self, pred_original_sample: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """The noise in `sample` at `timesteps` (one for all, per row or per position) implied by an x0 estimate:
        what a deterministic (DDIM) step keeps while it moves the canvas towards that estimate."""
        alpha_bar = self._alpha_bar(timesteps, sample)
        return (sample - alpha_bar.sqrt() * pred_original_sample) / (1 - alpha_bar).sqrt()

    def clip_original_sample(self, pred_original_sample: torch.Tensor) -> torch.Tensor:
        """Clamp an x0 estimate to +-`clip_sample_range` when `clip_sample` is set. With the sqrt schedule an
        epsilon prediction near t=T is turned into x0 with ~1,600x magnification: unclamped, one step ruins it."""
        if not self.config.clip_sample:
            return pred_original_sample
        return pred_original_sample.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)

    def estimate_original_sample(
        self, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """The clipped x0 estimate of `sample` at `timesteps` (one for all, per row or per position): what a step
        moves towards and what the decoder reads."""
        return self.clip_original_sample(self.predict_original_sample(model_output, timesteps, sample))

    def index_for_timestep(self, timestep: int | torch.Tensor) -> int:
        """The position of `timestep` in `self.timesteps`: steps are looked up by timestep, as they are called."""
        if self.num_inference_steps is None:
            raise ValueError("Call `set_timesteps(num_inference_steps)` before `step`.")
        position = (self.timesteps == torch.as_tensor(timestep, device=self.timesteps.device)).nonzero()
        if len(position) == 0:
            raise ValueError(
                f"timestep {int(timestep)} is not one of the scheduler's timesteps {self.timesteps.tolist()}."
            )
        return int(position[0, 0])

    def previous_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor | None:
        """The timestep a step from `timestep` lands on (the next of `self.timesteps`, a less noisy one); None after
        the last one, whose step lands on x0."""
        position = self.index_for_timestep(timestep) + 1
        return self.timesteps[position] if position < len(self.timesteps) else None

    def select(self, keep: torch.BoolTensor, canvas_length: int) -> None:
        """Follow the pipeline when it stops computing some rows (`keep` is False there) or the canvas past
        `canvas_length`: this scheduler keeps no per-row state, so there is nothing to cut."""

    def denoiser_timesteps(self, timestep: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The timesteps the denoiser reads for `sample` at `timestep`: the same for every row and position here; a
        committing sampler gives its committed positions t = 0."""
        return timestep

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
        pred_original_sample: torch.Tensor | None = None,
    ) -> CodeFusionSchedulerOutput | tuple:
        """
        One reverse step x_t -> x_{t_prev}, where t_prev is the next of `self.timesteps` (x0 after the last one).

        Args:
            model_output: The denoiser's output for `sample` at `timestep`.
            timestep: The current timestep, one of `self.timesteps`.
            sample: The noisy canvas x_t, `(batch_size, canvas_length, latent_dim)`.
            generator: Random generator(s) for the noise of stochastic steps.
            return_dict: Return a [`CodeFusionSchedulerOutput`] rather than a tuple.
            eta: 0 for deterministic DDIM, 1 for DDPM ancestral sampling, in between for a mix.
            pred_original_sample: An x0 estimate to step towards instead of the clipped one read from
                `model_output`: the estimate rounded onto code tokens (see `CodeFusionModel.round_estimate`).
        """
        if eta < 0:
            raise ValueError(f"eta must be non-negative, got {eta}.")
        timestep = torch.as_tensor(timestep, device=self.timesteps.device)
        prev_timestep = self.previous_timestep(timestep)

        # Python ints index the schedule: it stays on the CPU while the timesteps may live on the GPU.
        alpha_bar = self.alphas_cumprod[int(timestep)].to(sample.device, sample.dtype)
        alpha_bar_prev = (
            self.alphas_cumprod[int(prev_timestep)].to(sample.device, sample.dtype)
            if prev_timestep is not None
            else torch.ones((), device=sample.device, dtype=sample.dtype)
        )

        if pred_original_sample is None:
            pred_original_sample = self.estimate_original_sample(model_output, timestep, sample)
        pred_epsilon = self.predict_noise(pred_original_sample, timestep, sample)

        variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
        std_dev = eta * variance.clamp(min=0).sqrt()
        prev_sample = (
            alpha_bar_prev.sqrt() * pred_original_sample
            + (1 - alpha_bar_prev - std_dev**2).clamp(min=0).sqrt() * pred_epsilon
        )
        if eta > 0 and prev_timestep is not None:
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            prev_sample = prev_sample + std_dev * noise

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return CodeFusionSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


__all__ = ["CodeFusionScheduler", "CodeFusionSchedulerOutput"]
