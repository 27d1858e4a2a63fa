import math

import torch

from codefusion_hf.ranking_codefusion import kept_lengths, rank_candidates, ranked_groups, ranking_scores

PAD, EOS, VOCAB = 0, 2, 16


def scores_of(token_ids, log_probs, ranking, **kwargs):
    lengths = kept_lengths(token_ids, (PAD, EOS))
    return lengths, ranking_scores(token_ids, log_probs, lengths, ranking=ranking, vocab_size=VOCAB, **kwargs)


def test_rankings_score_what_they_say():
    """log_prob counts the token that ends the code, length_normalized does not (empty code last), consensus is the
    token-overlap F1 with the prompt's other candidates."""
    token_ids = torch.tensor([[7, 8, PAD, PAD], [PAD, PAD, PAD, PAD], [7, 9, EOS, PAD], [7, 8, PAD, PAD]])
    probabilities = [[0.5, 0.5, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.25, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]]
    log_probs = torch.tensor(probabilities).log()
    lengths, mean = scores_of(token_ids, log_probs, "log_prob")
    assert lengths.tolist() == [2, 0, 2, 2]
    expected = [2 * math.log(0.5) / 3, 0.0, (math.log(0.5) + math.log(0.25)) / 3, 3 * math.log(0.5) / 3]
    torch.testing.assert_close(mean, torch.tensor(expected))
    _, normalized = scores_of(token_ids, log_probs, "length_normalized")
    assert normalized[1] == -math.inf and math.isclose(normalized[0], math.log(0.5), rel_tol=1e-6)
    _, consensus = scores_of(token_ids, log_probs, "consensus", num_return_sequences=4)
    # [7, 8] agrees with [7, 8] (1), half with [7, 9] (0.5) and not with empty code (0).
    torch.testing.assert_close(consensus, torch.tensor([1.5 / 3, 0.0, 1.0 / 3, 1.5 / 3]))
    _, alone = scores_of(token_ids, log_probs, "consensus", num_return_sequences=1)
    assert alone.tolist() == [1.0] * 4  # a lone candidate agrees with itself


def test_positions_past_a_candidates_canvas_are_not_scored():
    token_ids = torch.tensor([[7, 8, 9, 10]])
    log_probs = torch.tensor([[0.5, 0.5, 0.5, 0.125]]).log()
    _, whole = scores_of(token_ids, log_probs, "log_prob")
    _, cut = scores_of(token_ids, log_probs, "log_prob", canvas_lengths=torch.tensor([3]))
    assert math.isclose(cut.item(), math.log(0.5), rel_tol=1e-6) and whole.item() < cut.item()


def test_rank_candidates_orders_each_prompts_candidates_best_first():
    order, ranked = rank_candidates(torch.tensor([0.0, 0.25, 0.125, -1.0, -0.5, -2.0]), 3)
    assert order.tolist() == [1, 2, 0, 4, 3, 5]
    assert ranked == [[0.25, 0.125, 0.0], [-0.5, -1.0, -2.0]]
    assert ranked_groups(["a0", "a1", "a2", "b0", "b1", "b2"], order, 3) == [["a1", "a2", "a0"], ["b1", "b0", "b2"]]
