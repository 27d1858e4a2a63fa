import math

import pytest
import torch

from codefusion_hf import CodeFusionCommitScheduler, CodeFusionScheduler
from codefusion_hf.scheduling_codefusion_commit import most_likely_tokens


@pytest.mark.parametrize("schedule", ["sqrt", "linear", "cosine"])
def test_add_noise_matches_alpha_bar(schedule):
    scheduler = CodeFusionScheduler(num_train_timesteps=1200, noise_schedule=schedule)
    alpha_bar = scheduler.alphas_cumprod
    assert torch.all(alpha_bar[1:] < alpha_bar[:-1]) and 0 < alpha_bar[-1] < alpha_bar[0] <= 1
    x0, noise = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    timesteps = torch.tensor([0, 600, 1199])
    noisy = scheduler.add_noise(x0, noise, timesteps)
    for row, t in enumerate(timesteps):
        expected = alpha_bar[t].sqrt() * x0[row] + (1 - alpha_bar[t]).sqrt() * noise[row]
        torch.testing.assert_close(noisy[row], expected)


def test_add_noise_with_one_timestep_per_position():
    scheduler = CodeFusionScheduler(num_train_timesteps=1200)
    alpha_bar = scheduler.alphas_cumprod
    x0, noise = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    timesteps = torch.tensor([[0, 600, 1199], [5, 5, 900]])
    noisy = scheduler.add_noise(x0, noise, timesteps)
    for row in range(2):
        for position in range(3):
            t = timesteps[row, position]
            expected = alpha_bar[t].sqrt() * x0[row, position] + (1 - alpha_bar[t]).sqrt() * noise[row, position]
            torch.testing.assert_close(noisy[row, position], expected)
    torch.testing.assert_close(scheduler.predict_noise(x0, timesteps, noisy), noise)


def test_sqrt_schedule_is_diffusion_lm():
    # alpha_bar(t) = 1 - sqrt(t / T + 1e-4), discretised as a product of (1 - beta) with beta <= 0.999.
    scheduler = CodeFusionScheduler(num_train_timesteps=1200)
    t = torch.tensor([0, 300, 1000], dtype=torch.float64)
    alpha_bar = 1 - torch.sqrt((t + 1) / 1200 + 1e-4)
    expected = alpha_bar / (1 - 1e-4**0.5)
    torch.testing.assert_close(scheduler.alphas_cumprod[[0, 300, 1000]].double(), expected, rtol=1e-4, atol=1e-6)
    assert 0 < scheduler.alphas_cumprod[-1] < 1e-3  # the clipped last beta keeps alpha_bar positive


def test_linear_and_cosine_schedules_are_ddpm_and_improved_ddpm():
    t = torch.tensor([0, 300, 1000])
    linear = CodeFusionScheduler(noise_schedule="linear", beta_start=1e-4, beta_end=0.02)
    betas = torch.linspace(1e-4, 0.02, 1200, dtype=torch.float64)
    torch.testing.assert_close(linear.alphas_cumprod[t].double(), torch.cumprod(1 - betas, 0)[t], rtol=1e-5, atol=1e-7)
    # Nichol & Dhariwal: alpha_bar(t) = f((t + 1) / T) / f(0), f(u) = cos((u + 0.008) / 1.008 * pi / 2) ** 2.
    cosine = CodeFusionScheduler(noise_schedule="cosine")
    f = lambda u: torch.cos((u + 0.008) / 1.008 * torch.pi / 2) ** 2  # noqa: E731
    expected = f((t.double() + 1) / 1200) / f(torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(cosine.alphas_cumprod[t].double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("num_train_timesteps", [100, 1200])
def test_timesteps_strictly_decreasing_for_every_step_count(spacing, num_train_timesteps):
    # Every count, not a few round ones: a float stride once gave n + 1 steps ending at t = -1 for n = 7 of 1200.
    scheduler = CodeFusionScheduler(num_train_timesteps=num_train_timesteps, timestep_spacing=spacing)
    for num_inference_steps in range(1, num_train_timesteps + 1):
        scheduler.set_timesteps(num_inference_steps)
        timesteps = scheduler.timesteps
        assert len(timesteps) == num_inference_steps, num_inference_steps
        assert torch.all(timesteps[1:] < timesteps[:-1]), num_inference_steps
        assert timesteps.min() >= 0 and timesteps.max() <= num_train_timesteps - 1, num_inference_steps
        if spacing == "trailing":
            assert timesteps[0] == num_train_timesteps - 1  # sampling starts from pure noise


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_min_timestep_places_the_steps_where_the_model_was_trained(spacing):
    """Within [min_timestep, T): the placement of the spacing over T - min_timestep timesteps, shifted by it."""
    clipped = CodeFusionScheduler(num_train_timesteps=1200, timestep_spacing=spacing)
    shorter = CodeFusionScheduler(num_train_timesteps=600, timestep_spacing=spacing)
    for num_inference_steps in (1, 7, 10, 600):
        clipped.set_timesteps(num_inference_steps, min_timestep=600)
        shorter.set_timesteps(num_inference_steps)
        assert clipped.timesteps.tolist() == (shorter.timesteps + 600).tolist()
        assert clipped.timesteps.min() >= 600 and clipped.timesteps.max() <= 1199
    clipped.set_timesteps(10, min_timestep=600)
    if spacing == "trailing":
        assert clipped.timesteps.tolist() == [1199, 1139, 1079, 1019, 959, 899, 839, 779, 719, 659]
    full = CodeFusionScheduler(timestep_spacing=spacing)
    full.set_timesteps(10, min_timestep=0)
    default = CodeFusionScheduler(timestep_spacing=spacing)
    default.set_timesteps(10)
    assert torch.equal(full.timesteps, default.timesteps)


def test_trailing_timesteps_of_a_step_count_that_does_not_divide_t():
    scheduler = CodeFusionScheduler()
    scheduler.set_timesteps(7)
    # 1200 * k // 7 - 1 for k = 7 .. 1
    assert scheduler.timesteps.tolist() == [1199, 1027, 856, 684, 513, 341, 170]


@pytest.mark.parametrize("schedule", ["sqrt", "linear", "cosine"])
@pytest.mark.parametrize("num_inference_steps", [10, 1200])
@pytest.mark.parametrize("start", [0, 5])
def test_ddim_with_oracle_noise_recovers_x0(schedule, num_inference_steps, start):
    """With a model that returns the true noise, deterministic sampling from any step lands on x0."""
    scheduler = CodeFusionScheduler(noise_schedule=schedule, clip_sample=False)
    scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 6, 8, generator=generator, dtype=torch.float64)
    noise = torch.randn(2, 6, 8, generator=generator, dtype=torch.float64)
    timesteps = scheduler.timesteps[start:]
    sample = scheduler.add_noise(x0, noise, timesteps[:1].expand(2))
    for t in timesteps:
        alpha_bar = scheduler.alphas_cumprod[t].double()
        true_noise = (sample - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        sample = scheduler.step(true_noise, t, sample, eta=0.0).prev_sample
    torch.testing.assert_close(sample, x0, rtol=1e-6, atol=1e-6)


def test_ddpm_step_is_stochastic_and_seeded():
    scheduler = CodeFusionScheduler()
    scheduler.set_timesteps(10)
    sample, model_output = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    t = scheduler.timesteps[0]
    first = scheduler.step(model_output, t, sample, eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
    again = scheduler.step(model_output, t, sample, eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
    other = scheduler.step(model_output, t, sample, eta=1.0, generator=torch.Generator().manual_seed(2)).prev_sample
    deterministic = scheduler.step(model_output, t, sample, eta=0.0).prev_sample
    # The diffusers order: step(model_output, timestep, sample, generator, return_dict).
    positional = scheduler.step(model_output, t, sample, torch.Generator().manual_seed(1), False, eta=1.0)[0]
    torch.testing.assert_close(positional, first)
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, deterministic)


def test_clip_and_given_estimate():
    scheduler = CodeFusionScheduler(clip_sample_range=2.0)
    scheduler.set_timesteps(10)
    sample = torch.randn(1, 5, 4) * 10
    output = scheduler.step(torch.zeros(1, 5, 4), scheduler.timesteps[0], sample)
    assert output.pred_original_sample.abs().max() <= 2.0

    given = torch.randn(1, 5, 4)
    stepped = scheduler.step(torch.zeros(1, 5, 4), scheduler.timesteps[-1], sample, pred_original_sample=given)
    assert stepped.pred_original_sample is given
    torch.testing.assert_close(stepped.prev_sample, given)  # the last step lands on the given x0


def test_save_load_round_trip(tmp_path):
    scheduler = CodeFusionScheduler(num_train_timesteps=300, noise_schedule="cosine", timestep_spacing="linspace")
    scheduler.save_pretrained(tmp_path)
    loaded = CodeFusionScheduler.from_pretrained(tmp_path)
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == {
        k: v for k, v in scheduler.config.items() if not k.startswith("_")
    }
    torch.testing.assert_close(loaded.alphas_cumprod, scheduler.alphas_cumprod)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"noise_schedule": "quadratic"}, "noise_schedule"),
        ({"prediction_type": "v_prediction"}, "prediction_type"),
        ({"timestep_spacing": "random"}, "timestep_spacing"),
        ({"clip_sample_range": 0}, "clip_sample_range"),
    ],
)
def test_bad_config(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CodeFusionScheduler(**kwargs)


@pytest.mark.parametrize("steps", [0, 1201])
def test_bad_num_inference_steps(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        CodeFusionScheduler().set_timesteps(steps)


def test_step_rejects_unknown_timestep():
    scheduler = CodeFusionScheduler()
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep 3"):
        scheduler.step(torch.zeros(1, 2, 2), 3, torch.zeros(1, 2, 2))


def test_custom_timesteps_are_used_as_given():
    """Custom timesteps (e.g. to refine a partly noised canvas) are kept as given, and sampling from a canvas
    noised to their first step lands on x0 with a model that returns the true noise."""
    scheduler = CodeFusionScheduler(clip_sample=False)
    scheduler.set_timesteps(timesteps=[900, 450, 7])
    assert scheduler.timesteps.tolist() == [900, 450, 7] and scheduler.num_inference_steps == 3
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 2, 4, 8, generator=generator, dtype=torch.float64)
    sample = scheduler.add_noise(x0, noise, torch.tensor([900]))
    for t in scheduler.timesteps:
        alpha_bar = scheduler.alphas_cumprod[t].double()
        sample = scheduler.step((sample - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt(), t, sample).prev_sample
    torch.testing.assert_close(sample, x0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one of num_inference_steps and timesteps"),
        ({"num_inference_steps": 5, "timesteps": [3, 2]}, "exactly one of num_inference_steps and timesteps"),
        ({"timesteps": []}, "strictly decreasing"),
        ({"timesteps": [5, 5, 1]}, "strictly decreasing"),
        ({"timesteps": [1, 5]}, "strictly decreasing"),
        ({"timesteps": [1200, 10]}, r"lie in \[0, 1200\)"),
        ({"timesteps": [10, -1]}, r"lie in \[0, 1200\)"),
        ({"num_inference_steps": 5, "min_timestep": 1200}, r"min_timestep must be in \[0, 1200\)"),
        ({"num_inference_steps": 5, "min_timestep": -1}, r"min_timestep must be in \[0, 1200\)"),
        ({"num_inference_steps": 601, "min_timestep": 600}, "between 1 and 600 .*min_timestep=600"),
    ],
)
def test_bad_custom_timesteps(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CodeFusionScheduler().set_timesteps(**kwargs)


def test_predict_noise_inverts_add_noise():
    scheduler = CodeFusionScheduler(num_train_timesteps=100)
    original, noise = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    timesteps = torch.tensor([0, 50, 99])
    noisy = scheduler.add_noise(original, noise, timesteps)
    torch.testing.assert_close(scheduler.predict_noise(original, timesteps, noisy), noise, rtol=1e-4, atol=1e-4)


def test_commit_scheduler_loads_the_default_schedulers_config():
    default = CodeFusionScheduler(num_train_timesteps=100, noise_schedule="cosine", prediction_type="sample")
    committing = CodeFusionCommitScheduler.from_config(default.config)
    fields = {key: value for key, value in default.config.items() if not key.startswith("_")}
    assert {key: committing.config[key] for key in fields} == fields
    assert torch.equal(committing.alphas_cumprod, default.alphas_cumprod)
    assert type(CodeFusionScheduler.from_config(committing.config)) is CodeFusionScheduler


def test_commit_scheduler_steps():
    """Each step commits ceil(canvas * (i + 1) / n) positions (0 at the denoiser's timesteps), keeps the decoder's
    tokens elsewhere, and commits everything after the last step; set_timesteps starts a new sampling, of any batch
    size, and a step before it is an error."""
    scheduler = CodeFusionCommitScheduler(num_train_timesteps=100)
    embeddings = torch.randn(7, 16, generator=torch.Generator().manual_seed(0))  # far apart: rounding is exact
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(
            torch.zeros(2, 5, 16), 99, torch.zeros(2, 5, 16), logits=torch.zeros(2, 5, 7), code_embeddings=embeddings
        )
    scheduler.set_timesteps(4)
    sample, generator = torch.randn(2, 5, 16), torch.Generator().manual_seed(0)
    for index, timestep in enumerate(scheduler.timesteps):
        denoiser_timesteps = scheduler.denoiser_timesteps(timestep, sample)
        assert (denoiser_timesteps == 0).sum(dim=1).tolist() == [math.ceil(5 * index / 4)] * 2
        logits = torch.randn(2, 5, 7, generator=generator)
        output = scheduler.step(
            torch.zeros_like(sample), timestep, sample, generator, logits=logits, code_embeddings=embeddings
        )
        committed = scheduler.committed_positions
        assert committed.sum(dim=1).tolist() == [math.ceil(5 * (index + 1) / 4)] * 2
        fresh = denoiser_timesteps != 0  # positions not committed before this step read this step's tokens
        assert torch.equal(output.token_ids[fresh], logits.argmax(-1)[fresh])
        sample = output.prev_sample
    assert committed.all()
    # The last canvas is the committed tokens at t = 0: the nearest embedding of each position is its token.
    assert torch.equal(torch.cdist(sample, embeddings[None]).argmin(-1), output.token_ids)
    scheduler.set_timesteps(2)
    assert scheduler.committed_positions is None
    output = scheduler.step(
        torch.zeros(1, 4, 16),
        scheduler.timesteps[0],
        torch.zeros(1, 4, 16),
        logits=torch.randn(1, 4, 7),
        code_embeddings=embeddings,
    )
    assert output.token_ids.shape == (1, 4) and scheduler.committed_positions.sum() == 2


def test_commit_scheduler_follows_each_rows_own_canvas():
    """With `canvas_lengths`, each row commits ceil(length * (i + 1) / n) positions of its own canvas and never one
    past it, whose logits it does not read; after `select` cuts the canvas, the cut positions count as committed."""
    scheduler = CodeFusionCommitScheduler(num_train_timesteps=100)
    embeddings = torch.randn(7, 16, generator=torch.Generator().manual_seed(0))
    scheduler.set_timesteps(4)
    sample, generator = torch.randn(3, 6, 16), torch.Generator().manual_seed(0)
    lengths, asked = torch.tensor([6, 3, 1]), []

    def logits_at(positions):
        asked.append(positions.clone())
        return torch.randn(int(positions.sum()), 7, generator=generator)

    past = torch.arange(6)[None, :] >= lengths[:, None]
    for index, timestep in enumerate(scheduler.timesteps[:2]):
        output = scheduler.step(
            torch.zeros_like(sample),
            timestep,
            sample,
            generator,
            logits_at=logits_at,
            code_embeddings=embeddings,
            canvas_lengths=lengths,
        )
        committed = scheduler.committed_positions
        assert committed.sum(dim=1).tolist() == [math.ceil(n * (index + 1) / 4) for n in lengths.tolist()]
        assert not committed[past].any() and not asked[-1][past].any()
        sample = output.prev_sample
    # The committed tail cut off: the first row keeps 4 positions, 2 of its 6 counted as committed.
    scheduler.select(torch.tensor([True, True, False]), 4)
    scheduler.step(
        torch.zeros(2, 4, 16),
        scheduler.timesteps[2],
        sample[:2, :4],
        generator,
        logits_at=logits_at,
        code_embeddings=embeddings,
    )
    assert scheduler.committed_positions.sum(dim=1).tolist() == [math.ceil(6 * 3 / 4) - 2, math.ceil(3 * 3 / 4)]


def test_commit_scheduler_reads_logits_only_where_it_uses_them():
    """`logits_at` is asked only for the positions not committed before the step and the ones it releases, and the
    step equals the one given every position's logits; exactly one of the two is required."""
    embeddings = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    steps = {}
    for mode in ("logits", "logits_at"):
        scheduler = CodeFusionCommitScheduler(num_train_timesteps=100)
        scheduler.set_timesteps(4)
        sample, generator = torch.randn(3, 6, 3), torch.Generator().manual_seed(0)
        logits_generator, asked, released = torch.Generator().manual_seed(1), [], []
        outputs = []
        for index, timestep in enumerate(scheduler.timesteps):
            before = None if scheduler.committed_positions is None else scheduler.committed_positions.clone()
            # Sharper logits at every step: fresh positions outscore some committed ones, which are released.
            logits = torch.randn(3, 6, 7, generator=logits_generator) * 3 * (index + 1)

            def logits_at(positions, logits=logits):
                asked.append(positions.clone())
                return logits[positions]

            given = {"logits": logits} if mode == "logits" else {"logits_at": logits_at}
            output = scheduler.step(
                torch.zeros_like(sample), timestep, sample, generator, code_embeddings=embeddings, **given
            )
            if before is not None:
                released.append(before & ~scheduler.committed_positions)
            outputs.append(output)
            sample = output.prev_sample
        steps[mode] = outputs
    for plain, selective in zip(steps["logits"], steps["logits_at"]):
        assert torch.equal(plain.prev_sample, selective.prev_sample) and torch.equal(
            plain.token_ids, selective.token_ids
        )
    assert asked[0].all() and not asked[1].all()  # the first step reads everything, the later ones less
    assert any(mask.any() for mask in released)  # this draw releases positions, so their reads are tested too
    with pytest.raises(ValueError, match="either as `logits` or as `logits_at`"):
        scheduler.step(torch.zeros_like(sample), scheduler.timesteps[0], sample, code_embeddings=embeddings)


def test_diffusers_scheduler_interface():
    scheduler = CodeFusionScheduler(num_train_timesteps=10)
    sample = torch.randn(2, 3, 4)
    assert scheduler.init_noise_sigma == 1.0 and scheduler.scale_model_input(sample, 5) is sample
    betas = torch.linspace(1e-3, 0.05, 10).tolist()
    given = CodeFusionScheduler(num_train_timesteps=10, trained_betas=betas)
    torch.testing.assert_close(given.alphas_cumprod, torch.cumprod(1 - torch.tensor(betas), dim=0))
    assert type(CodeFusionScheduler.from_config(given.config)).__name__ == "CodeFusionScheduler"
    for bad, message in ((betas[:5], "trained_betas has 5 values"), ([0.0] * 10, r"in \(0, 1\)")):
        with pytest.raises(ValueError, match=message):
            CodeFusionScheduler(num_train_timesteps=10, trained_betas=bad)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_steps_stay_finite_when_the_signal_vanishes(eta):
    """Linear betas up to 0.2 drive alpha_bar to 0 (in float32) long before T: every step stays finite."""
    scheduler = CodeFusionScheduler(num_train_timesteps=1000, noise_schedule="linear", beta_start=0.01, beta_end=0.2)
    scheduler.set_timesteps(50)
    sample, generator = torch.randn(1, 4, 3), torch.Generator().manual_seed(0)
    for timestep in scheduler.timesteps:
        sample = scheduler.step(
            torch.randn(1, 4, 3, generator=generator), timestep, sample, generator, eta=eta
        ).prev_sample
        assert torch.isfinite(sample).all(), int(timestep)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_most_likely_tokens_match_log_softmax_across_chunks(dtype):
    logits = (torch.randn(3, 50, 97, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    expected_log_probs, expected_ids = logits.float().log_softmax(dim=-1).max(dim=-1)
    for chunk_size in (1, 64, 150, 1000):  # 150 positions: one chunk, several, a remainder
        log_probs, token_ids = most_likely_tokens(logits, chunk_size=chunk_size)
        assert log_probs.shape == token_ids.shape == (3, 50) and log_probs.dtype == torch.float32
        assert torch.equal(token_ids, expected_ids)
        torch.testing.assert_close(log_probs, expected_log_probs)
