"""Planning the canvases of a CodeFusion call: how much room each candidate's code gets, which candidates share a
batch, and how much of a committing sampler's canvas is still worth computing. Pure functions of tensors, so that
each rule is tested without a model."""

import torch

# Candidates on canvases of different lengths share a batch while padding them to its longest canvas computes at most
# this many times their own positions, or at most this many positions more, about what one more loop of steps costs
# on a CPU at one prompt (`canvas_groups`).
MAX_CANVAS_PADDING = 1.25
CANVAS_PADDING_ALLOWANCE = 256


def predicted_code_lengths(
    length_logits: torch.Tensor, num_return_sequences: int = 1, length_beam: int = 1
) -> torch.LongTensor:
    """Each candidate's code length, `(num_prompts * num_return_sequences,)`, from the length head's
    `(num_prompts, max_code_length + 1)` logits: candidate `i` of a prompt gets its `i % length_beam`-th likeliest
    length (each at least one token, and distinct; the argmax, raised to 1, for a beam of one)."""
    if length_beam == 1:
        likeliest = length_logits.argmax(dim=-1, keepdim=True).clamp(min=1)
    else:  # distinct lengths, of at least one token
        likeliest = length_logits[:, 1:].topk(length_beam, dim=-1).indices + 1
    ranks = torch.arange(num_return_sequences, device=likeliest.device) % length_beam
    return likeliest[:, ranks].flatten()


def canvas_lengths(
    code_lengths: torch.LongTensor, canvas_margin: int | None, max_code_length: int
) -> torch.LongTensor:
    """The canvas for each code length: the length plus the pad positions the model was trained with after the code
    (`config.canvas_margin`), at most the whole canvas of `max_code_length` positions."""
    return (code_lengths + (canvas_margin or 0)).clamp(max=max_code_length)


def canvas_groups(canvas_lengths: torch.LongTensor) -> list[torch.LongTensor]:
    """The candidates denoised together, as index tensors: from the longest canvas down, each group takes the next
    shorter canvases while its rows padded to its longest canvas stay within `MAX_CANVAS_PADDING` times their own
    positions or `CANVAS_PADDING_ALLOWANCE` positions more (a length beam's few canvases share one batch and one loop
    of steps, where a batch of prompts of very different lengths would compute mostly padding)."""
    lengths = canvas_lengths.tolist()
    groups, members, own = [], [], 0
    for length in sorted(set(lengths), reverse=True):
        rows = [i for i, row_length in enumerate(lengths) if row_length == length]
        if members:
            padded = (len(members) + len(rows)) * lengths[members[0]]
            merged_own = own + len(rows) * length
            if padded > max(MAX_CANVAS_PADDING * merged_own, merged_own + CANVAS_PADDING_ALLOWANCE):
                groups.append(members)
                members, own = [], 0
        members, own = members + rows, own + len(rows) * length
    groups.append(members)
    return [torch.tensor(group, device=canvas_lengths.device) for group in groups]


def settled_canvas_length(settled: torch.BoolTensor, settled_margin: int) -> int:
    """How much of a `(rows, canvas_length)` canvas is still worth computing, where `settled` marks the positions
    that can no longer change what is read (a committed pad or eos, or past a row's own canvas): up to the last
    unsettled position of any row, plus `settled_margin` settled positions (what a model trained with that
    `canvas_margin` saw after the code); at least one position, at most the canvas."""
    canvas_length = settled.shape[1]
    positions = torch.arange(1, canvas_length + 1, device=settled.device)
    last_unsettled = int((positions * ~settled).max())
    return max(1, min(canvas_length, last_unsettled + settled_margin))


__all__ = ["canvas_groups", "canvas_lengths", "predicted_code_lengths", "settled_canvas_length"]
