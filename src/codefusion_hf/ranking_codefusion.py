"""Reading and ranking CodeFusion's candidates: where each candidate's code ends, its ranking score, and each
prompt's candidates in order. Pure functions of token ids and log-probabilities; the ranking never looks at a
reference."""

import math

import torch


def kept_lengths(token_ids: torch.LongTensor, stop_token_ids: tuple[int, ...]) -> torch.LongTensor:
    """Each row's code length: the position of its first stop token (pad or eos), else the whole canvas."""
    is_stop = torch.isin(token_ids, torch.tensor(stop_token_ids, device=token_ids.device))
    positions = torch.arange(token_ids.shape[1], device=token_ids.device)
    return torch.where(is_stop, positions, token_ids.shape[1]).min(dim=1).values


def ranking_scores(
    token_ids: torch.LongTensor,
    token_log_probs: torch.Tensor,
    lengths: torch.LongTensor,
    *,
    ranking: str = "log_prob",
    num_return_sequences: int = 1,
    vocab_size: int,
    canvas_lengths: torch.LongTensor | None = None,
) -> torch.Tensor:
    """Each row's ranking score, for the code of `lengths` (see `kept_lengths`). `ranking` is one of `RANKINGS`:

    - `"log_prob"`: the mean log-probability of the kept tokens and the token that ends them;
    - `"length_normalized"`: the mean over the kept tokens alone, -inf for empty code (the confident pad that ends
      short code no longer lifts it);
    - `"consensus"`: the mean token-overlap F1 of the row's kept tokens with those of its prompt's other candidates
      (rows in groups of `num_return_sequences`), the minimum-Bayes-risk choice that DiffuSeq and DINOISER make.

    `canvas_lengths`: each row's own canvas, when rows were sampled on canvases of different lengths (the positions
    past it hold pad and are not scored)."""
    if ranking == "consensus":
        return consensus_scores(token_ids, lengths, num_return_sequences, vocab_size)
    positions = torch.arange(token_ids.shape[1], device=token_ids.device)
    scored = positions[None, :] <= lengths[:, None]
    if ranking == "length_normalized":
        scored = positions[None, :] < lengths[:, None]
    if canvas_lengths is not None:
        scored &= positions[None, :] < canvas_lengths[:, None]
    scores = (token_log_probs * scored).sum(dim=1) / scored.sum(dim=1)
    return scores.nan_to_num(nan=-math.inf)  # 0 / 0: empty code, length-normalised


def consensus_scores(
    token_ids: torch.Tensor, lengths: torch.Tensor, num_return_sequences: int, vocab_size: int
) -> torch.Tensor:
    """Each row's mean token-overlap F1 (bags of kept token ids) with the other rows of its group of
    `num_return_sequences`; 1 for a group of one, and between two empty rows."""
    kept = torch.arange(token_ids.shape[1], device=token_ids.device)[None, :] < lengths[:, None]
    counts = torch.zeros(len(token_ids), vocab_size, device=token_ids.device).scatter_add_(1, token_ids, kept.float())
    counts = counts.view(-1, num_return_sequences, vocab_size)  # (prompts, k, vocabulary)
    sizes = counts.sum(dim=-1)
    scores = torch.zeros_like(sizes) if num_return_sequences > 1 else torch.ones_like(sizes)
    for i in range(num_return_sequences):  # k is small: pairs one at a time keep memory at one (prompts, vocabulary)
        for j in range(num_return_sequences):
            if i != j:
                overlap = torch.minimum(counts[:, i], counts[:, j]).sum(dim=-1)
                total = sizes[:, i] + sizes[:, j]
                scores[:, i] += torch.where(total > 0, 2 * overlap / total.clamp(min=1), 1.0)
    return (scores / max(num_return_sequences - 1, 1)).flatten()


def rank_candidates(scores: torch.Tensor, num_return_sequences: int) -> tuple[torch.LongTensor, list[list[float]]]:
    """The rows of each prompt's candidates best first, as indices into the flat `(num_prompts *
    num_return_sequences,)` rows, and each prompt's scores in that order."""
    scores = scores.view(-1, num_return_sequences)
    order = scores.argsort(dim=1, descending=True)
    flat_order = (order + torch.arange(len(scores), device=order.device)[:, None] * num_return_sequences).flatten()
    return flat_order, scores.gather(1, order).tolist()


def ranked_groups(items: list, order: torch.LongTensor, num_return_sequences: int) -> list[list]:
    """The rows' `items` (texts, say) in `order` (as `rank_candidates` gives it), one list per prompt."""
    items = [items[i] for i in order.tolist()]
    return [items[i : i + num_return_sequences] for i in range(0, len(items), num_return_sequences)]


__all__ = ["consensus_scores", "kept_lengths", "rank_candidates", "ranked_groups", "ranking_scores"]
