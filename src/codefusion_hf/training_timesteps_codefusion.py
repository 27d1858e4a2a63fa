"""The distributions training timesteps are drawn from: a fixed one (the biased or clipped weights of
`timestep_weights`) or the loss-aware sampler that learns its own (`LossAwareTimestepSampler`)."""

import torch

TIMESTEP_BIAS_STRATEGIES = ("none", "later", "earlier")


def timestep_weights(
    num_train_timesteps: int,
    bias_strategy: str = "none",
    bias_multiplier: float = 1.0,
    bias_portion: float = 0.25,
    min_timestep: int = 0,
) -> torch.Tensor:
    """The probability of drawing each of `num_train_timesteps` training timesteps: the latest (`bias_strategy=
    "later"`) or earliest (`"earlier"`) `bias_portion` of them `bias_multiplier` times more often than the others
    (as diffusers' SDXL training script), and none below `min_timestep`."""
    if bias_strategy not in TIMESTEP_BIAS_STRATEGIES:
        raise ValueError(f"bias_strategy must be one of {TIMESTEP_BIAS_STRATEGIES}, got {bias_strategy!r}.")
    if min_timestep >= num_train_timesteps:
        raise ValueError(
            f"min_train_timestep={min_timestep} leaves no timestep to train on: the model has "
            f"num_train_timesteps={num_train_timesteps}."
        )
    weights = torch.ones(num_train_timesteps)
    num_biased = max(1, round(bias_portion * num_train_timesteps))
    if bias_strategy == "later":
        weights[num_train_timesteps - num_biased :] *= bias_multiplier
    elif bias_strategy == "earlier":
        weights[:num_biased] *= bias_multiplier
    weights[:min_timestep] = 0
    return weights / weights.sum()


class LossAwareTimestepSampler:
    """Improved DDPM's loss-second-moment timestep sampler (Nichol & Dhariwal, 2021), which GENIE and DiffuSeq train
    with: timestep t is drawn with probability proportional to `base[t]` times the root mean square of the last
    `history` row losses seen in its bucket (`num_buckets` runs of consecutive timesteps, so that the estimate is
    ready after about `num_buckets * history` rows instead of T times that), mixed with `uniform_share` of `base`.
    Each row's importance weight `base[t] / p[t]` keeps the loss an unbiased estimate of the loss under `base`.
    Until every bucket that `base` can draw from has its history, timesteps are drawn from `base` with weight 1.
    The history is not checkpointed: a resumed run warms up again."""

    def __init__(self, base: torch.Tensor, num_buckets: int = 100, history: int = 10, uniform_share: float = 0.001):
        self.base = base / base.sum()
        self.num_buckets = min(num_buckets, len(base))
        self.bucket_of = torch.arange(len(base)) * self.num_buckets // len(base)
        self.losses = torch.zeros(self.num_buckets, history)
        self.counts = torch.zeros(self.num_buckets, dtype=torch.long)
        self.used = torch.zeros(self.num_buckets, dtype=torch.bool).index_fill(0, self.bucket_of[self.base > 0], True)
        self.uniform_share = uniform_share

    @property
    def warm(self) -> bool:
        return bool((self.counts[self.used] >= self.losses.shape[1]).all())

    def probabilities(self) -> torch.Tensor:
        """The distribution timesteps are drawn from now."""
        if not self.warm:
            return self.base
        root_mean_square = self.losses.pow(2).mean(dim=1).sqrt()[self.bucket_of]
        weighted = self.base * root_mean_square
        return (1 - self.uniform_share) * weighted / weighted.sum() + self.uniform_share * self.base

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` timesteps and each one's importance weight."""
        probabilities = self.probabilities()
        timesteps = torch.multinomial(probabilities, batch_size, replacement=True)
        return timesteps, self.base[timesteps] / probabilities[timesteps]

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the row losses of rows drawn at `timesteps` (a row's largest timestep where they vary along it)."""
        if timesteps.ndim == 2:
            timesteps = timesteps.max(dim=1).values
        for bucket, loss in zip(self.bucket_of[timesteps].tolist(), losses.float().tolist()):
            history = self.losses[bucket]
            history[:-1] = history[1:].clone()  # the oldest out
            history[-1] = loss
            self.counts[bucket] += 1


__all__ = ["LossAwareTimestepSampler", "TIMESTEP_BIAS_STRATEGIES", "timestep_weights"]
