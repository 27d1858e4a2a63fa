"""The benchmark scripts count what they claim and refuse bad requests; nothing here times anything."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import PAIRS
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the scripts as modules of the repository root
from benchmarks import benchmark_training  # noqa: E402


def test_flop_formula_matches_the_flop_counter(tiny_model, code_tokenizer):
    """The per-pass formula (from the config and each pass's shapes) against torch's own count of one forward."""
    prompts = code_tokenizer([prompt for prompt, _ in PAIRS], padding=True, return_tensors="pt")
    labels = code_tokenizer([code for _, code in PAIRS], padding=True, return_tensors="pt")["input_ids"]
    counter = benchmark_training.PassCounter(tiny_model)
    tiny_model.train()  # the training path (nn.MultiheadAttention's fast path is for inference only)
    # The math attention kernel: its matmuls are counted (the CPU's flash kernel is not, by FlopCounterMode).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as flop_counter:
        tiny_model(**prompts, labels=labels)
    counted = flop_counter.get_total_flops()
    step = counter.step_flops()
    by_part = step["flops"]
    assert set(by_part) == {f"{part} (no grad)" for part in ("prompt encoder", "denoiser", "decoder", "head")}
    assert step["canvas_tokens"] == 0  # no trained denoiser pass under no_grad
    # Left out of the formula: the timestep embedding's MLP and the attention's softmax and scaling (under 1% here).
    assert abs(sum(by_part.values()) - counted) / counted < 0.01


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--batch_size", "0"], "--batch_size must be at least 1"),
        (["--device", "tpu"], "--device must be cpu or cuda"),
        (["--recipe", "huge"], "invalid choice: 'huge'"),
        (["--recipe", "autoregressive", "--compare", "HEAD"], "--compare measures CodeFusion recipes"),
    ],
)
def test_bad_requests_are_refused(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        benchmark_training.parse_args([*argv, "--output", str(tmp_path / "out.json")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit):
        benchmark_training.parse_args(["--device", "cuda", "--output", str(tmp_path / "out.json")])
    assert "no CUDA device is available" in capsys.readouterr().err


def test_drop_options():
    argv = ["--recipe", "quickstart", "--canvas_margin", "4", "--group_by_length", "--output=x.json", "--steps", "2"]
    kept = benchmark_training.drop_options(argv, ("--canvas_margin", "--output"), flags=("--group_by_length",))
    assert kept == ["--recipe", "quickstart", "--steps", "2"]


def test_trained_passes_count_their_backward(tiny_model, code_tokenizer):
    """A pass with gradients costs 3x its forward; the canvas positions learned from are the trained denoiser's."""
    prompts = code_tokenizer([prompt for prompt, _ in PAIRS], padding=True, return_tensors="pt")
    labels = code_tokenizer([code for _, code in PAIRS], padding=True, return_tensors="pt")["input_ids"]
    counter = benchmark_training.PassCounter(tiny_model)
    tiny_model.train()
    tiny_model(**prompts, labels=labels)
    trained = counter.step_flops()
    with torch.no_grad():
        tiny_model(**prompts, labels=labels)
    forward_only = counter.step_flops()
    for part in ("prompt encoder", "denoiser", "decoder", "head"):
        assert trained["flops"][f"{part} (trained)"] == 3 * forward_only["flops"][f"{part} (no grad)"]
    assert trained["canvas_tokens"] == len(PAIRS) * tiny_model.config.max_code_length
