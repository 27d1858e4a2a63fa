import torch

from codefusion_hf import CodeFusionCommitScheduler
from codefusion_hf.modeling_codefusion import CodeFusionPromptCache
from codefusion_hf.sampling_options_codefusion import SamplingOptions
from codefusion_hf.sampling_state_codefusion import CandidateResults, DenoisingRows, settled_rows

PAD, EOS, VOCAB, WIDTH = 0, 2, 9, 4


def make_rows(num_rows=3, canvas=6, canvas_lengths=None) -> DenoisingRows:
    generator = torch.Generator().manual_seed(0)
    return DenoisingRows(
        indices=torch.arange(num_rows) + 10,
        canvas_lengths=torch.tensor(canvas_lengths or [canvas] * num_rows),
        latents=torch.randn(num_rows, canvas, WIDTH, generator=generator),
        encoder_hidden_states=torch.randn(num_rows, 3, WIDTH, generator=generator),
        attention_mask=torch.ones(num_rows, 3, dtype=torch.long),
        prompt_cache=CodeFusionPromptCache(
            [(torch.randn(num_rows, 2, 3, 2), torch.randn(num_rows, 2, 3, 2))],
            [(torch.randn(num_rows, 2, 3, 2), torch.randn(num_rows, 2, 3, 2))],
        ),
        generator=[torch.Generator().manual_seed(i) for i in range(num_rows)],
        self_condition=torch.zeros(num_rows, canvas, WIDTH),
    )


def committing_step(scheduler, rows, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*rows.latents.shape[:2], VOCAB, generator=generator)
    return scheduler.step(
        torch.zeros_like(rows.latents),
        scheduler.timesteps[0],
        rows.latents,
        logits=logits,
        code_embeddings=torch.randn(VOCAB, WIDTH, generator=generator),
        canvas_lengths=rows.canvas_lengths,
    )


def test_shrink_keeps_rows_and_scheduler_in_step():
    """The kept rows and positions of every per-row tensor, and of the scheduler's committed state, so that the next
    step runs on both as if the dropped rows and positions had never been there."""
    scheduler = CodeFusionCommitScheduler(num_train_timesteps=100)
    scheduler.set_timesteps(4)
    rows = make_rows(canvas_lengths=[6, 5, 6])
    committing_step(scheduler, rows)
    committed, tokens = scheduler.committed_positions.clone(), scheduler.committed_tokens.clone()
    keep = torch.tensor([True, False, True])
    shrunk = rows.shrink(keep, 4, scheduler)
    assert shrunk.indices.tolist() == [10, 12] and shrunk.canvas_lengths.tolist() == [6, 6]
    assert torch.equal(shrunk.latents, rows.latents[keep, :4])
    assert torch.equal(shrunk.self_condition, rows.self_condition[keep, :4])
    assert torch.equal(shrunk.encoder_hidden_states, rows.encoder_hidden_states[keep])
    assert torch.equal(shrunk.prompt_cache.decoder[0][1], rows.prompt_cache.decoder[0][1][keep])
    assert shrunk.generator == [rows.generator[0], rows.generator[2]]
    assert torch.equal(scheduler.committed_positions, committed[keep, :4])
    assert torch.equal(scheduler.committed_tokens, tokens[keep, :4])
    assert scheduler.canvas_lengths.tolist() == [6, 6]  # the schedule still counts the whole canvas
    shrunk.latents = shrunk.latents.clone()
    scheduler.timesteps = scheduler.timesteps[1:]  # the next step, on the shrunk rows
    output = committing_step(scheduler, shrunk, seed=1)
    assert output.token_ids.shape == (2, 4)


def test_results_count_the_steps_each_candidates_tokens_held():
    rows = make_rows(num_rows=2, canvas=3)
    rows.indices = torch.tensor([0, 1])
    results = CandidateResults.start(torch.zeros(2, 4, WIDTH), 3, PAD, record_steps={1})
    first = torch.tensor([[5, 6, PAD], [7, PAD, PAD]])
    results.update(rows, first, torch.zeros(2, 3))
    results.update(rows, torch.tensor([[5, 6, PAD], [8, PAD, PAD]]), torch.zeros(2, 3))
    assert results.stable_steps.tolist() == [1, 0]
    results.snapshot(1, rows.indices)
    assert results.snapshots[1][0].tolist() == [5, 6, PAD] and results.reached == {1}
    assert results.latents.shape == (2, 3, WIDTH)  # the longest canvas of the call


def test_settled_rows_drop_stable_candidates_and_the_committed_pad_tail():
    scheduler = CodeFusionCommitScheduler(num_train_timesteps=100)
    scheduler.set_timesteps(2)
    rows = make_rows(num_rows=2, canvas=6)
    rows.indices = torch.tensor([0, 1])
    results = CandidateResults.start(rows.latents, 6, PAD, record_steps=set())
    step = committing_step(scheduler, rows)
    step.committed_positions[:] = True
    results.update(rows, torch.tensor([[5, 6, PAD, PAD, PAD, PAD], [5, EOS, PAD, PAD, PAD, PAD]]), torch.zeros(2, 6))
    options = SamplingOptions(settled_margin=1, commit_tokens=True)
    kept = settled_rows(rows, step, results, options, scheduler, (PAD, EOS))
    assert kept.indices.tolist() == [0, 1] and kept.latents.shape[1] == 3  # up to position 2 plus one settled
    assert scheduler.committed_positions.shape == (2, 3)
    assert torch.equal(results.latents[:, :6], rows.latents)  # the canvas as it stood before the cut
    stable = SamplingOptions(stop_when_stable=1)
    results.stable_steps[:] = torch.tensor([1, 0])
    assert settled_rows(kept, step, results, stable, scheduler, (PAD, EOS)).indices.tolist() == [1]
    results.stable_steps[:] = 0
    assert settled_rows(kept, step, results, stable, scheduler, (PAD, EOS)) is kept  # nothing settled: the same rows
