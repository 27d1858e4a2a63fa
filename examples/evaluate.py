"""Generate k ranked candidates per prompt with a saved CodeFusion pipeline and score them.

    python examples/evaluate.py --model runs/nl2bash-finetune --test_file ../shared/data/nl2bash/validation.jsonl \
        --language bash --output_dir runs/eval/nl2bash-validation

Writes predictions.jsonl (prompt, reference, ranked candidates, scores) and metrics.json (top-1/3/5 of each
metric, the share of non-empty and of distinct top-1 outputs, seconds per prompt, machine), and prints them.
Candidates are ranked by the pipeline's score, which never looks at the reference.
"""

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from codefusion_hf.evaluation_codefusion import LANGUAGE_HELP, evaluate_file


@dataclass
class EvaluationArguments:
    model: str = field(metadata={"help": "Saved pipeline folder or Hub repo id."})
    test_file: str = field(metadata={"help": "JSON Lines / CSV / Parquet file with prompts and reference code."})
    output_dir: str = field(metadata={"help": "Where predictions.jsonl and metrics.json go."})
    language: str = field(default="bash", metadata={"help": LANGUAGE_HELP})
    prompt_column: str = field(default="prompt")
    code_column: str = field(default="code")
    num_return_sequences: int = field(default=5, metadata={"help": "Candidates per prompt (k)."})
    num_inference_steps: int = field(default=20)
    timesteps: list[int] | None = field(
        default=None,
        metadata={"help": "Custom strictly decreasing timesteps instead of num_inference_steps evenly placed ones."},
    )
    batch_size: int = field(default=16, metadata={"help": "Prompts per pipeline call (each with k candidates)."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows."})
    seed: int = field(default=0)
    rounding: str | None = field(
        default=None,
        metadata={
            "help": "Round each step's x0 estimate: none, nearest, decoder or decoder_mean (default: the model's)."
        },
    )
    commit_tokens: bool = field(
        default=False,
        metadata={"help": "Commit the most confident tokens step by step, as mask-predict does (not in the paper)."},
    )
    guidance_scale: float = field(
        default=1.0, metadata={"help": "Classifier-free guidance scale (not in the paper); 1 turns it off."}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: CUDA if available)."})


def main():
    (args,) = HfArgumentParser(EvaluationArguments).parse_args_into_dataclasses()
    metrics = evaluate_file(
        args.model,
        args.test_file,
        args.output_dir,
        prompt_column=args.prompt_column,
        code_column=args.code_column,
        max_samples=args.max_samples,
        language=args.language,
        num_return_sequences=args.num_return_sequences,
        num_inference_steps=args.num_inference_steps,
        timesteps=args.timesteps,
        batch_size=args.batch_size,
        seed=args.seed,
        rounding=args.rounding,
        commit_tokens=args.commit_tokens,
        guidance_scale=args.guidance_scale,
        device=args.device,
    )
    for name, value in metrics.items():
        print(f"{name:>24}  {value:.4f}" if isinstance(value, float) else f"{name:>24}  {value}")


if __name__ == "__main__":
    main()
