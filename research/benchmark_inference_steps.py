"""Accuracy and time of a saved CodeFusion pipeline against the number of denoising steps: one `evaluate_pipeline`
run (k ranked candidates per prompt, the same seed) for each step count, written to one JSON file.

    python research/benchmark_inference_steps.py --model runs/nl2bash-finetune \
        --test_file data/nl2bash/validation.jsonl --max_samples 100 --output steps.json

Plot it with `python research/plot_results.py --steps steps.json`.
"""

import json
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from codefusion_hf import CodeFusionPipeline
from codefusion_hf.constants import ROUNDINGS
from codefusion_hf.data_codefusion import load_code_dataset
from codefusion_hf.evaluation_codefusion import evaluate_pipeline
from codefusion_hf.sampling_options_codefusion import SamplingOptions


@dataclass
class BenchmarkArguments:
    model: str = field(metadata={"help": "Saved pipeline folder or Hub repo id."})
    test_file: str = field(metadata={"help": "JSON Lines / CSV / Parquet file with prompt and code columns."})
    output: str = field(metadata={"help": "JSON file to write."})
    steps: list[int] = field(default_factory=lambda: [5, 10, 25, 50, 100, 200])
    max_samples: int | None = field(default=100, metadata={"help": "Evaluate the first N rows (all: 0)."})
    language: str = field(default="bash")
    num_return_sequences: int = field(default=5)
    batch_size: int = field(default=16)
    seed: int = field(default=0)
    rounding: str | None = field(
        default=None, metadata={"help": "Sampler rounding (default: the model's own).", "choices": list(ROUNDINGS)}
    )
    commit_tokens: bool = field(
        default=False,
        metadata={"help": "Commit the most confident tokens step by step, as mask-predict does (not in the paper)."},
    )
    device: str | None = field(default=None, metadata={"help": "Default: CUDA if available."})


def main():
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    data = load_code_dataset(args.test_file, max_samples=args.max_samples or None)
    pipe = CodeFusionPipeline.from_pretrained(args.model)
    pipe.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    runs = []
    for steps in args.steps:
        _, _, metrics = evaluate_pipeline(
            pipe,
            list(data["prompt"]),
            list(data["code"]),
            language=args.language,
            sampling=SamplingOptions(
                num_inference_steps=steps,
                num_return_sequences=args.num_return_sequences,
                rounding=args.rounding,
                commit_tokens=args.commit_tokens,
            ),
            batch_size=args.batch_size,
            seed=args.seed,
        )
        runs.append(metrics)
        print(json.dumps({key: metrics[key] for key in ("num_inference_steps", "seconds_per_prompt")}))
        with open(args.output, "w") as f:  # rewritten after each step count, so a stopped run keeps its results
            json.dump({"model": args.model, "test_file": args.test_file, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
