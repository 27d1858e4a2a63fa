import pytest
import torch

from codefusion_hf import canvas_planning_codefusion
from codefusion_hf.canvas_planning_codefusion import (
    canvas_groups,
    canvas_lengths,
    predicted_code_lengths,
    settled_canvas_length,
)


def test_predicted_code_lengths_spread_candidates_over_the_likeliest_lengths():
    """Candidate i of a prompt gets its (i % length_beam)-th likeliest length, of at least one token."""
    logits = torch.tensor([[9.0, 1.0, 5.0, 7.0, 0.0], [0.0, 3.0, 2.0, 1.0, 4.0]])
    assert predicted_code_lengths(logits, 3, 1).tolist() == [1, 1, 1, 4, 4, 4]  # the argmax 0 raised to 1
    assert predicted_code_lengths(logits, 4, 2).tolist() == [3, 2, 3, 2, 4, 1, 4, 1]
    assert predicted_code_lengths(logits, 3, 3).tolist() == [3, 2, 1, 4, 1, 2]


def test_canvas_lengths_add_the_trained_margin_within_the_canvas():
    code_lengths = torch.tensor([1, 10, 15])
    assert canvas_lengths(code_lengths, 2, 16).tolist() == [3, 12, 16]
    assert canvas_lengths(code_lengths, None, 16).tolist() == [1, 10, 15]


def test_canvas_groups_batch_similar_canvases_only():
    """A length beam's neighbouring canvases share one batch; canvases whose padding would cost more than
    MAX_CANVAS_PADDING times their own positions and CANVAS_PADDING_ALLOWANCE positions more do not."""
    groups = canvas_groups(torch.tensor([18, 17, 16, 18, 17]))
    assert [sorted(group.tolist()) for group in groups] == [[0, 1, 2, 3, 4]]
    groups = canvas_groups(torch.tensor([27, 10, 12, 27, 10]))  # a few padded positions: one batch
    assert [sorted(group.tolist()) for group in groups] == [[0, 1, 2, 3, 4]]
    lengths = torch.tensor([40, 10, 10, 39, 9]).repeat_interleave(8)  # 24 rows padded by 30: apart
    groups = canvas_groups(lengths)
    assert [sorted(lengths[group].unique().tolist()) for group in groups] == [[39, 40], [9, 10]]
    assert sorted(torch.cat(groups).tolist()) == list(range(len(lengths)))  # every row in exactly one group
    assert (canvas_planning_codefusion.MAX_CANVAS_PADDING, canvas_planning_codefusion.CANVAS_PADDING_ALLOWANCE) == (
        1.25,
        256,
    )


@pytest.mark.parametrize(
    "settled, margin, expected",
    [
        ([[False, False, True, True, True, True]], 1, 3),  # the last unsettled position is 2, plus one
        ([[False, False, True, True, True, True], [False, False, False, False, True, True]], 0, 4),  # any row
        ([[True, True, True, True]], 0, 1),  # at least one position
        ([[False, True, True, True]], 10, 4),  # at most the canvas
        ([[True, False, True, True]], 0, 2),  # a settled position before an unsettled one does not count
    ],
)
def test_settled_canvas_length_keeps_the_margin_after_the_last_unsettled_position(settled, margin, expected):
    assert settled_canvas_length(torch.tensor(settled), margin) == expected
