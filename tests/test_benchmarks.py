"""The benchmark scripts count what they claim and refuse bad requests; nothing here times anything."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import PAIRS
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the scripts as modules of the repository root
from benchmarks import benchmark_generation, benchmark_training  # noqa: E402


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


def test_generation_benchmark_reports_every_setting(tiny_pipeline, code_tokenizer, monkeypatch, tmp_path):
    """The report's plumbing, on tiny models: every setting at every thread count and batch, FLOPs counted, the
    ratios taken against beam search of the same row."""
    from research.baselines.train_autoregressive import AutoregressiveModelArguments, build_model

    tiny_t5 = '{"d_model": 32, "d_ff": 64, "d_kv": 16, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2}'
    baseline, _ = build_model(AutoregressiveModelArguments(model_overrides=tiny_t5), code_tokenizer)
    monkeypatch.setattr(benchmark_generation, "build_codefusion", lambda args: tiny_pipeline)
    monkeypatch.setattr(
        benchmark_generation, "build_autoregressive", lambda args, tokenizer: (baseline, tokenizer, tokenizer)
    )
    monkeypatch.setattr(benchmark_generation, "matmul_peak", lambda *args: 1e12 * torch.get_num_threads())
    output = tmp_path / "generation.json"
    argv = ["--batches", "1", "2", "--threads", "1", "2", "--repeats", "1", "--steps", "2"]
    argv += ["--autoregressive_length", "3"]
    report = benchmark_generation.main(
        [*argv, "--pipeline_kwargs", '{"stop_when_stable": 1}', "--output", str(output)]
    )
    assert json.loads(output.read_text()) == report
    assert report["weights"] == "random" and report["pipeline_kwargs"] == {"stop_when_stable": 1}
    assert [(row["threads"], row["prompts"]) for row in report["results"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for row in report["results"]:  # each row against the peak of its own thread count
        assert row["matmul_peak_flops_per_second"] == 1e12 * row["threads"]
        for setting in row["settings"].values():
            assert setting["share_of_matmul_peak"] == pytest.approx(
                setting["flops_per_second"] / (1e12 * row["threads"])
            )
        assert set(row["settings"]) == {
            "autoregressive, beam 5",
            "autoregressive, beam 5, early stopping",
            "autoregressive, 5 samples",
            "codefusion, commit, 2 steps",
            "codefusion, ddim, 2 steps",
        }
        assert row["ratio_to_beam_5"]["autoregressive, beam 5"] == 1.0
        assert all(setting["flops"] > 0 and len(setting["seconds"]) == 1 for setting in row["settings"].values())
    assert report["autoregressive_generation"] == {"max_new_tokens": 3, "min_new_tokens": 3}
    assert report["baseline_neighbors"] == 0


def test_the_retrieval_augmented_baseline_reads_its_neighbours_in_each_timed_call(code_tokenizer, tmp_path):
    """--baseline_neighbors k: the baseline's saved retriever gives each prompt the code of its k nearest pairs,
    appended as its evaluation appends them."""
    from datasets import Dataset

    from codefusion_hf import CodeFusionRetriever
    from research.baselines.train_autoregressive import RETRIEVER_FOLDER, neighbor_separator, with_neighbors

    corpus = Dataset.from_dict({"prompt": [p for p, _ in PAIRS], "code": [c for _, c in PAIRS]})
    retriever = CodeFusionRetriever.from_dataset(corpus)
    retriever.save_pretrained(tmp_path / RETRIEVER_FOLDER)
    args = benchmark_generation.parse_args(
        ["--pipeline", "p", "--baseline", str(tmp_path), "--baseline_neighbors", "2", "--output", "o.json"]
    )
    prompts = [PAIRS[0][0], "count lines in a file"]
    expected = with_neighbors(prompts, retriever, 2, neighbor_separator(code_tokenizer), leave_one_out=False)
    assert benchmark_generation.baseline_neighbors(args, code_tokenizer)(prompts) == expected
    assert expected[0].startswith(PAIRS[0][0]) and PAIRS[0][1] in expected[0]
    args.baseline = str(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="holds no retriever"):
        benchmark_generation.baseline_neighbors(args, code_tokenizer)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--batches", "0"], "--batches and --threads must be at least 1"),
        (["--device", "tpu"], "--device must be cpu or cuda"),
        (["--eval_samples", "5"], "need a trained --pipeline"),
        (["--pipeline_kwargs", "{"], "--pipeline_kwargs is not JSON"),
        (["--pipeline_kwargs", "[1]"], "must be a JSON object"),
        (["--baseline_neighbors", "2"], "needs the --baseline trained with them"),
    ],
)
def test_generation_benchmark_refuses_bad_requests(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        benchmark_generation.parse_args([*argv, "--output", str(tmp_path / "out.json")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
