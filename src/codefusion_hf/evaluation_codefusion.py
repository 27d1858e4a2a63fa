"""Evaluate a CodeFusion pipeline: k ranked candidates per prompt, top-k metrics, predictions written to disk."""

import importlib.util
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

from .constants import LANGUAGES, SYNTAX_LANGUAGES
from .hub_codefusion import write_atomically
from .metrics import bleu, codebleu, distinct_n, is_valid_syntax, top_k_accuracy
from .sampling_options_codefusion import SamplingOptions

if TYPE_CHECKING:
    from .pipeline_codefusion import CodeFusionPipeline

logger = logging.get_logger(__name__)

# Top-k metrics of each language; every language gets exact match.
LANGUAGE_METRICS = {"bash": ["exact_match", "template_match"]}
# What `evaluate_pipeline` samples unless told otherwise: k = 5 for the top-5 metrics, in 20 steps.
EVALUATION_SAMPLING = SamplingOptions(num_inference_steps=20, num_return_sequences=5)


def check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(
            f"language must be one of {LANGUAGES}, got {language!r}: 'other' scores any other language by exact "
            "match and BLEU only."
        )


def evaluate_pipeline(
    pipe: "CodeFusionPipeline",
    prompts: list[str],
    references: list[str],
    language: str = "bash",
    sampling: SamplingOptions = EVALUATION_SAMPLING,
    batch_size: int = 16,
    seed: int = 0,
    init_code: list[str] | list[list[str]] | None = None,
) -> tuple[list[list[str]], list[list[float]], dict]:
    """Generate `sampling.num_return_sequences` ranked candidates per prompt (in batches, with a progress bar) as
    the `sampling` options say, and score them: top-1/3/5 of each metric of the language, the share of non-empty and
    of distinct top-1 outputs, seconds per prompt, and the options the calls resolved. Returns (candidates, scores,
    metrics). The ranking never looks at the references. `init_code` (one program, or list of programs, per prompt)
    refines those programs instead of starting from noise."""
    if init_code is not None and len(init_code) != len(prompts):
        raise ValueError(f"init_code has {len(init_code)} entries for {len(prompts)} prompts: give one per prompt.")
    if len(prompts) != len(references):
        raise ValueError(f"prompts ({len(prompts)}) and references ({len(references)}) differ in length.")
    if not prompts:
        raise ValueError("prompts is empty: nothing to evaluate.")
    check_language(language)  # before generating, which takes the time
    pipe = sampling.prepare_pipeline(pipe)
    pipe.set_progress_bar_config(disable=True)  # one bar over batches instead of one per denoising loop
    generator = torch.Generator().manual_seed(seed)
    done, settings = 0, None  # prompts generated so far (generate_candidates runs the batches in order); options run

    def generate_fn(batch: list[str]) -> tuple[list[list[str]], list[list[float]]]:
        nonlocal done, settings
        drafts = None if init_code is None else list(init_code[done : done + len(batch)])
        done += len(batch)
        output = pipe(batch, generator=generator, init_code=drafts, **sampling.call_kwargs())
        settings = output.settings
        return output.code, output.scores

    candidates, scores, seconds = generate_candidates(generate_fn, prompts, batch_size)
    metrics = score_candidates(candidates, references, language) | asdict(settings)
    return (
        candidates,
        scores,
        metrics
        | {
            "scheduler": type(pipe.scheduler).__name__,
            "init_code": init_code is not None,
            "seconds_per_prompt": seconds / len(prompts),
        },
    )


def generate_candidates(
    generate_fn: Callable[[list[str]], tuple[list[list[str]], list[list[float]]]],
    prompts: list[str],
    batch_size: int = 16,
) -> tuple[list[list[str]], list[list[float]], float]:
    """Run any generator of ranked candidates (CodeFusion, an autoregressive baseline, ...) over `prompts` in batches,
    with one progress bar, so every model is timed and scored the same way. `generate_fn` maps a batch of prompts to
    (ranked candidates, their scores) per prompt. Returns (candidates, scores, seconds spent generating)."""
    candidates, scores = [], []
    start = time.perf_counter()
    for begin in tqdm(range(0, len(prompts), batch_size), desc="Generating", unit="batch"):
        batch = prompts[begin : begin + batch_size]
        codes, code_scores = generate_fn(batch)
        if len(codes) != len(batch) or len(code_scores) != len(batch):
            raise ValueError(
                f"generate_fn returned {len(codes)} candidate lists and {len(code_scores)} score lists for "
                f"{len(batch)} prompts."
            )
        candidates += codes
        scores += code_scores
    return candidates, scores, time.perf_counter() - start


def score_candidates(candidates: list[list[str]], references: list[str], language: str) -> dict:
    """Top-1/3/5 of each metric of the language (k up to the number of candidates), BLEU (and, for Python, CodeBLEU)
    of the top-1 candidates, the share of syntactically valid candidates (top-1 and all), distinct-1/2 among each
    prompt's candidates, the share of non-empty and of distinct top-1 outputs (low when the noise, not the prompt,
    decides), and the machine. Empty candidate lists count as wrong and invalid; `language` is one of `LANGUAGES`."""
    check_language(language)
    if len(candidates) != len(references) or not candidates:
        raise ValueError(
            f"candidates ({len(candidates)} prompts) and references ({len(references)}) must be equally long and "
            "not empty."
        )
    most = max(len(codes) for codes in candidates)
    if most == 0:
        raise ValueError("every prompt's candidate list is empty: nothing was generated to score.")
    ks = [k for k in (1, 3, 5) if k <= most]
    metrics = {
        f"{metric}@{k}": top_k_accuracy(candidates, references, metric, k)
        for metric in LANGUAGE_METRICS.get(language, ["exact_match"])
        for k in ks
    }
    top1 = [codes[0] if codes else "" for codes in candidates]
    metrics["bleu@1"] = bleu(top1, references)
    if language == "python":
        if all(importlib.util.find_spec(package) for package in ("codebleu", "tree_sitter_python")):
            metrics["codebleu@1"] = codebleu(top1, references)
        else:
            logger.warning("CodeBLEU left out: install the codebleu extra (pip install -e '.[codebleu]').")
    if language in SYNTAX_LANGUAGES:
        every = [code for codes in candidates for code in codes]
        metrics["syntax_valid@1"] = sum(is_valid_syntax(code, language) for code in top1) / len(top1)
        metrics["syntax_valid_all"] = sum(is_valid_syntax(code, language) for code in every) / len(every)
    metrics |= {"distinct_1": distinct_n(candidates, 1), "distinct_2": distinct_n(candidates, 2)}
    return metrics | {
        "non_empty_rate": sum(bool(code.strip()) for code in top1) / len(top1),
        "distinct_top1_rate": len(set(top1)) / len(top1),
        "num_prompts": len(references),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
    }


def evaluate_file(
    model: str,
    test_file: str,
    output_dir: str,
    prompt_column: str = "prompt",
    code_column: str = "code",
    max_samples: int | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    **evaluate_kwargs,
) -> dict:
    """Load a saved pipeline (folder or repo id) and a data file, run `evaluate_pipeline` (`evaluate_kwargs`:
    language, sampling, batch_size, seed) on `device` (default: CUDA when available) in `dtype` (default: as saved),
    write the results to `output_dir`, return metrics."""
    from .data_codefusion import load_code_dataset
    from .pipeline_codefusion import CodeFusionPipeline  # here: the baselines score with this module, model-free

    device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_writable(output_dir)  # before the generation, which takes the time
    data = load_code_dataset(test_file, prompt_column=prompt_column, code_column=code_column, max_samples=max_samples)
    prompts, references = list(data["prompt"]), list(data["code"])
    pipe = CodeFusionPipeline.from_pretrained(model, dtype=dtype).to(device)
    candidates, scores, metrics = evaluate_pipeline(pipe, prompts, references, **evaluate_kwargs)
    metrics |= {"model": model, "test_file": test_file, "dtype": str(pipe.model.dtype).removeprefix("torch.")}
    write_evaluation(output_dir, prompts, references, candidates, scores, metrics)
    return metrics


def check_device(device: str) -> torch.device:
    """`device` as a torch device that this machine has, or a ValueError that says why not."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a torch device: use cpu, cuda, cuda:1, mps, ...") from None
    backend = getattr(torch, parsed.type, None)
    if parsed.type != "cpu" and not (backend is not None and backend.is_available()):
        raise ValueError(f"device {device!r} was asked for, but this torch has no usable {parsed.type} device.")
    count = getattr(backend, "device_count", None)
    if parsed.type != "cpu" and parsed.index is not None and count is not None and parsed.index >= count():
        raise ValueError(
            f"device {device!r} was asked for, but this machine has only {count()} {parsed.type} device(s)."
        )
    return parsed


def check_writable(output_dir: str) -> None:
    """Create `output_dir` and make sure files can be written there, or fail with an OSError naming it."""
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as error:
        raise OSError(f"output directory {output_dir} cannot be created ({error.strerror}).") from None
    if not os.access(output_dir, os.W_OK):
        raise OSError(f"{output_dir} is not writable: choose another output directory.")


def write_evaluation(
    output_dir: str,
    prompts: list[str],
    references: list[str],
    candidates: list[list[str]],
    scores: list[list[float]],
    metrics: dict,
) -> None:
    """Write predictions.jsonl (prompt, reference, ranked candidates, scores) and metrics.json to `output_dir`:
    both serialised first, each renamed into place once written, and an old metrics.json removed before the new
    predictions go in, so a failure leaves the old pair and a run killed between the two renames leaves no
    metrics.json, never new predictions beside old metrics, nor a part of a file."""
    rows = zip(prompts, references, candidates, scores)
    predictions = "".join(
        json.dumps({"prompt": prompt, "reference": reference, "candidates": codes, "scores": code_scores}) + "\n"
        for prompt, reference, codes, code_scores in rows
    )
    metrics_text = json.dumps(metrics, indent=2)
    os.makedirs(output_dir, exist_ok=True)
    metrics_file = os.path.join(output_dir, "metrics.json")
    if os.path.exists(metrics_file):
        os.remove(metrics_file)
    write_atomically(os.path.join(output_dir, "predictions.jsonl"), predictions)
    write_atomically(metrics_file, metrics_text)


__all__ = ["evaluate_file", "evaluate_pipeline", "generate_candidates", "score_candidates", "write_evaluation"]
