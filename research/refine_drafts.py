"""Refinement as a lever: a saved pipeline refines drafts (`pipe(..., init_code=, strength=)`) from another system's
predictions, such as the retrieval floor's, at several strengths; each strength is reported next to the drafts
themselves on the same prompts, with the share of top-1 outputs that only copy their draft, so that copying is never
counted as the model's skill.

    python research/baselines/retrieval.py --train_file data/nl2bash/train.jsonl \
        --test_file data/nl2bash/validation.jsonl --output_dir runs/retrieval/nl2bash-validation
    python research/refine_drafts.py --model runs/quickstart \
        --drafts runs/retrieval/nl2bash-validation/predictions.jsonl --strengths 0.3 0.6 0.9 --max_samples 200 \
        --commit_tokens --output runs/refine/summary.json
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from codefusion_hf import CodeFusionPipeline
from codefusion_hf.constants import LANGUAGE_HELP
from codefusion_hf.evaluation_codefusion import evaluate_pipeline, score_candidates
from codefusion_hf.sampling_options_codefusion import SamplingOptions


@dataclass
class RefineArguments:
    model: str = field(metadata={"help": "Saved pipeline folder or Hub repo id."})
    drafts: str = field(metadata={"help": "predictions.jsonl (prompt, reference, candidates) of the drafting system."})
    output: str = field(metadata={"help": "JSON file to write."})
    strengths: list[float] = field(default_factory=lambda: [0.3, 0.6, 0.9])
    drafts_per_prompt: int = field(
        default=1, metadata={"help": "Refine each prompt's first N drafts (its candidates start from them in turn)."}
    )
    max_samples: int | None = field(default=200, metadata={"help": "The first N prompts (all: 0)."})
    num_return_sequences: int = field(default=5)
    num_inference_steps: int = field(default=10, metadata={"help": "Of the whole schedule; strength runs a share."})
    commit_tokens: bool = field(default=False, metadata={"help": "Sample with CodeFusionCommitScheduler."})
    language: str = field(default="bash", metadata={"help": LANGUAGE_HELP})
    batch_size: int = field(default=16)
    seed: int = field(default=0)


def load_drafts(path: str, max_samples: int | None) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows or any(not {"prompt", "reference", "candidates"} <= row.keys() for row in rows):
        raise ValueError(f"{path}: every line must hold prompt, reference and candidates (a predictions.jsonl).")
    return rows[:max_samples] if max_samples else rows


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser(RefineArguments)
    (args,) = parser.parse_args_into_dataclasses(argv)
    if any(not 0 < strength <= 1 for strength in args.strengths):
        raise ValueError(f"--strengths must lie in (0, 1], got {args.strengths}.")
    rows = load_drafts(args.drafts, args.max_samples)
    prompts, references = [row["prompt"] for row in rows], [row["reference"] for row in rows]
    drafts = [[code for code in row["candidates"][: args.drafts_per_prompt] if code.strip()] for row in rows]
    if any(not programs for programs in drafts):
        raise ValueError(f"{args.drafts}: some prompts have no non-empty draft to refine.")
    pipe = CodeFusionPipeline.from_pretrained(args.model)
    summary = {
        "drafts": score_candidates([row["candidates"] for row in rows], references, args.language),
        "refined": {},
        "arguments": vars(args),
    }
    for strength in args.strengths:
        candidates, _, metrics = evaluate_pipeline(
            pipe,
            prompts,
            references,
            language=args.language,
            sampling=SamplingOptions(
                num_inference_steps=args.num_inference_steps,
                num_return_sequences=args.num_return_sequences,
                strength=strength,
                commit_tokens=args.commit_tokens,
            ),
            batch_size=args.batch_size,
            seed=args.seed,
            init_code=drafts,
        )
        copies = sum(codes[0].strip() == programs[0].strip() for codes, programs in zip(candidates, drafts))
        summary["refined"][str(strength)] = metrics | {"top1_copies_its_draft": copies / len(rows)}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
