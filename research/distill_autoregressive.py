"""Sequence-level knowledge distillation (Kim & Rush, 2016) for CodeFusion: decode every training prompt with a trained
autoregressive baseline (beam search with 5 beams, its top beam) and write a training file whose code is the
teacher's, so that CodeFusion learns one consistent program per prompt instead of the data's many.

    python -m research.distill_autoregressive --teacher runs/nl2bash-autoregressive \
        --train_file data/nl2bash/train.jsonl --output runs/distilled/train.jsonl
    python -m research.distill_autoregressive --teacher runs/nl2bash-autoregressive \
        --train_file data/nl2bash/train.jsonl --output runs/distilled/mixed.jsonl --include_original True

Run from the repository root, as a module (it imports the baseline's decoding). The teacher is a folder written by
research/baselines/train_autoregressive.py; anything else is refused before decoding. Each output row holds the
prompt, `code` (the teacher's top beam, or the original for the original rows of a mix) and `source` ("teacher" or
"original"). `--include_original` writes both rows for every prompt: the mix of distilled and original targets.
"""

import json
import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, HfArgumentParser

from codefusion_hf.data_codefusion import load_code_dataset
from codefusion_hf.evaluation_codefusion import generate_candidates
from research.baselines.train_autoregressive import (
    AutoregressiveModelArguments,
    GenerationEvaluationArguments,
    load_saved,
    make_generate_fn,
)


@dataclass
class DistillationArguments:
    teacher: str = field(metadata={"help": "A folder saved by research/baselines/train_autoregressive.py."})
    train_file: str = field(metadata={"help": "The training rows (prompt, code) to distil."})
    output: str = field(metadata={"help": "The JSON Lines training file to write."})
    include_original: bool = field(default=False, metadata={"help": "Also write every original row (a mix)."})
    num_beams: int = field(default=5, metadata={"help": "Beams of the teacher's search; its top beam is kept."})
    batch_size: int = field(default=64, metadata={"help": "Prompts per generate() call."})
    max_samples: int | None = field(default=None, metadata={"help": "Distil only the first N rows."})
    max_prompt_length: int = field(default=64, metadata={"help": "Prompt tokens the teacher reads (as trained)."})
    max_code_length: int = field(default=64, metadata={"help": "Code tokens the teacher may emit, eos included."})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's)."})


def check_teacher(path: str) -> None:
    """Refuse, before decoding, a folder that is not a trained encoder-decoder baseline."""
    if not os.path.isdir(path):
        raise ValueError(f"--teacher {path} is not a folder: give the output_dir of train_autoregressive.py.")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"--teacher {path} has no config.json: it is not a model saved by train_autoregressive.py.")
    config = AutoConfig.from_pretrained(path)
    if not getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"--teacher {path} holds a {config.model_type!r} model, not an encoder-decoder baseline saved by "
            "train_autoregressive.py (a CodeFusion pipeline cannot be a teacher here)."
        )
    weights = ("model.safetensors", "model.safetensors.index.json")
    if not any(os.path.isfile(os.path.join(path, name)) for name in weights):
        raise ValueError(f"--teacher {path} has no model.safetensors: its training did not finish saving.")


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(DistillationArguments).parse_args_into_dataclasses(argv)
    if args.num_beams < 1 or args.batch_size < 1:
        raise ValueError(f"--num_beams and --batch_size must be at least 1, got {args.num_beams}, {args.batch_size}.")
    check_teacher(args.teacher)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = load_code_dataset(args.train_file, max_samples=args.max_samples)
    model, code_tokenizer, prompt_tokenizer = load_saved(args.teacher)
    model.eval()
    model_args = AutoregressiveModelArguments(
        max_prompt_length=args.max_prompt_length, max_code_length=args.max_code_length
    )
    decoding = GenerationEvaluationArguments(decoding="beam", num_return_sequences=args.num_beams)
    generate_fn = make_generate_fn(model, code_tokenizer, prompt_tokenizer, model_args, decoding)
    candidates, _, seconds = generate_candidates(generate_fn, list(rows["prompt"]), args.batch_size)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    changed = 0
    with open(args.output, "w") as f:
        for prompt, code, beams in zip(rows["prompt"], rows["code"], candidates):
            changed += beams[0] != code
            f.write(json.dumps({"prompt": prompt, "code": beams[0], "source": "teacher"}) + "\n")
            if args.include_original:
                f.write(json.dumps({"prompt": prompt, "code": code, "source": "original"}) + "\n")
    summary = {
        "teacher": args.teacher,
        "train_file": args.train_file,
        "output": args.output,
        "rows": len(rows) * (2 if args.include_original else 1),
        "prompts": len(rows),
        "teacher_differs_from_reference": changed / len(rows),
        "num_beams": args.num_beams,
        "seconds": seconds,
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
