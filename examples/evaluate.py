"""Generate k ranked candidates per prompt with a saved CodeFusion pipeline and score them.

    python examples/evaluate.py --model runs/nl2bash-finetune --test_file ../shared/data/nl2bash/validation.jsonl \
        --language bash --output_dir runs/eval/nl2bash-validation

Writes predictions.jsonl (prompt, reference, ranked candidates, scores) and metrics.json (top-1/3/5 of each
metric, the share of non-empty and of distinct top-1 outputs, seconds per prompt, machine), and prints a table.
Candidates are ranked by the pipeline's score, which never looks at the reference.
"""

import json
import os
import platform
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from codefusion_hf import CodeFusionPipeline
from codefusion_hf.metrics import top_k_accuracy
from codefusion_hf.training_codefusion import load_code_dataset

LANGUAGE_METRICS = {"bash": ["exact_match", "template_match"]}


@dataclass
class EvaluationArguments:
    model: str = field(metadata={"help": "Saved pipeline folder or Hub repo id."})
    test_file: str = field(metadata={"help": "JSON Lines / CSV / Parquet file with prompts and reference code."})
    output_dir: str = field(metadata={"help": "Where predictions.jsonl and metrics.json go."})
    language: str = field(default="bash", metadata={"help": "bash adds template match to exact match."})
    prompt_column: str = field(default="prompt")
    code_column: str = field(default="code")
    num_return_sequences: int = field(default=5, metadata={"help": "Candidates per prompt (k)."})
    num_inference_steps: int = field(default=20)
    batch_size: int = field(default=16, metadata={"help": "Prompts per pipeline call (each with k candidates)."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows."})
    seed: int = field(default=0)


def main():
    (args,) = HfArgumentParser(EvaluationArguments).parse_args_into_dataclasses()
    data = load_code_dataset(args.test_file, prompt_column=args.prompt_column, code_column=args.code_column)
    if args.max_samples:
        data = data.select(range(min(args.max_samples, len(data))))
    pipe = CodeFusionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)  # one bar over batches instead of one per denoising loop
    generator = torch.Generator().manual_seed(args.seed)

    candidates, scores = [], []
    start = time.perf_counter()
    for begin in tqdm(range(0, len(data), args.batch_size), desc="Generating", unit="batch"):
        output = pipe(
            data[begin : begin + args.batch_size]["prompt"],
            num_inference_steps=args.num_inference_steps,
            num_return_sequences=args.num_return_sequences,
            generator=generator,
        )
        candidates += output.code
        scores += output.scores
    seconds = time.perf_counter() - start

    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "predictions.jsonl"), "w") as f:
        for prompt, reference, codes, code_scores in zip(data["prompt"], data["code"], candidates, scores):
            row = {"prompt": prompt, "reference": reference, "candidates": codes, "scores": code_scores}
            f.write(json.dumps(row) + "\n")
    ks = [k for k in (1, 3, 5) if k <= args.num_return_sequences]
    metrics = {
        f"{metric}@{k}": top_k_accuracy(candidates, data["code"], metric, k)
        for metric in LANGUAGE_METRICS.get(args.language, ["exact_match"])
        for k in ks
    }
    top1 = [codes[0] for codes in candidates]
    metrics |= {
        "non_empty_rate": sum(bool(code.strip()) for code in top1) / len(top1),
        "distinct_top1_rate": len(set(top1)) / len(top1),
        "num_prompts": len(data),
        "num_return_sequences": args.num_return_sequences,
        "num_inference_steps": args.num_inference_steps,
        "seconds_per_prompt": seconds / len(data),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "model": args.model,
        "test_file": args.test_file,
    }
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    for name, value in metrics.items():
        print(f"{name:>24}  {value:.4f}" if isinstance(value, float) else f"{name:>24}  {value}")


if __name__ == "__main__":
    main()
