"""The training timestep distributions (training_timesteps_codefusion) on their own; that the trainer's draws reach
the model is tested in test_training.py."""

import pytest
import torch

from codefusion_hf.training_timesteps_codefusion import LossAwareTimestepSampler, timestep_weights


@pytest.mark.parametrize("strategy", ["none", "later", "earlier"])
def test_timestep_weights_bias_and_clip(strategy):
    """With multiplier 3, 'later' draws the noisiest quarter of the steps half the time, 'earlier' the cleanest; no
    step below min_timestep is drawn and the others keep their ratios."""
    weights = timestep_weights(1200, strategy, bias_multiplier=3.0)
    expected = {"none": (0.25, 0.25), "later": (0.5, 1 / 6), "earlier": (1 / 6, 0.5)}[strategy]
    torch.testing.assert_close((weights[900:].sum().item(), weights[:300].sum().item()), expected)
    clipped = timestep_weights(1200, strategy, bias_multiplier=3.0, min_timestep=30)
    assert clipped[:30].sum() == 0
    torch.testing.assert_close(clipped[30:], weights[30:] / weights[30:].sum())
    with pytest.raises(ValueError, match="min_train_timestep=1200 leaves no timestep to train on"):
        timestep_weights(1200, strategy, min_timestep=1200)
    with pytest.raises(ValueError, match="bias_strategy must be one of"):
        timestep_weights(1200, "late")


def test_loss_aware_sampler_draws_by_the_root_mean_square_of_recent_losses():
    base = torch.ones(100).index_fill(0, torch.arange(20), 0)  # min_train_timestep=20: buckets 0 and 1 unused
    sampler = LossAwareTimestepSampler(base, num_buckets=10, history=2, uniform_share=0.0)
    torch.testing.assert_close(sampler.probabilities(), base / 80)  # not warm: the base distribution, weight 1
    timesteps, weights = sampler.sample(50)
    assert timesteps.min() >= 20 and torch.equal(weights, torch.ones(50))
    for _ in range(2):  # bucket 9 (timesteps 90-99) has losses 10 times the others'
        sampler.update(torch.arange(20, 100, 10), torch.tensor([1.0] * 7 + [10.0]))
    assert sampler.warm
    probabilities = sampler.probabilities()
    assert probabilities[:20].sum() == 0 and torch.isclose(probabilities[95] / probabilities[25], torch.tensor(10.0))
    losses = torch.rand(100)  # the importance weights keep any per-timestep loss's expectation the base one's
    timesteps = torch.arange(100)
    weights = (base / 80)[timesteps] / probabilities.clamp(min=1e-12)[timesteps]
    torch.testing.assert_close((probabilities * weights * losses).sum(), (base / 80 * losses).sum())
    sampler.update(torch.tensor([[0, 95, 0]]), torch.tensor([5.0]))  # per-position timesteps: the row's largest
    assert sampler.losses[9, -1] == 5.0
