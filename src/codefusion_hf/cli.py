"""The `codefusion` command: generate, evaluate, push and demo CodeFusion pipelines from the shell."""

import argparse
import json
import sys
import warnings
from typing import TYPE_CHECKING

from huggingface_hub.errors import HfHubHTTPError

from .constants import LANGUAGE_HELP, LANGUAGES, RANKINGS, ROUNDINGS

if TYPE_CHECKING:
    from .sampling_options_codefusion import SamplingOptions

# Errors a user can cause (bad path, bad argument, unknown repo): reported as one line, exit code 2.
USER_ERRORS = (ValueError, OSError, HfHubHTTPError)
MEMORY_HINT = "not enough memory for this many candidates: lower -k or the number of prompts (evaluate: --batch-size)."


class ArgumentParser(argparse.ArgumentParser):
    """Usage mistakes as one line (`codefusion generate: error: ...`) and exit code 2, without the usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


ROUNDING_HELP = "How each step's x0 estimate is rounded onto code tokens (default: the model's own)."
COMMIT_TOKENS_HELP = (
    "Sample with CodeFusionCommitScheduler: commit the decoder's surest tokens step by step and re-noise the rest "
    "(mask-predict style; measured best on NL2Bash with --steps 10). Not in the paper."
)


DTYPE_HELP = (
    "Weights and activations in this dtype (default: as saved, float32). bfloat16 is faster on GPUs and on CPUs with "
    "native bf16 (AVX512-BF16 or AMX); see the Sampling page."
)
DTYPES = ("float32", "bfloat16", "float16")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def seed_int(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**64 - 1 (a torch seed), got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def code_length_value(text: str) -> int | str:
    if text in ("predicted", "full"):
        return text
    try:
        return positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'predicted', 'full' or a positive integer, got {text!r}") from None


class DeprecatedOption(argparse.Action):
    """An option's old name: stores into the new one's destination, with a FutureWarning naming the new one."""

    def __init__(self, *args, new_name: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.new_name = new_name

    def __call__(self, parser, namespace, values, option_string=None):
        warnings.warn(f"{option_string} is deprecated: use {self.new_name}.", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def add_sampling_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """The options of `SamplingOptions`, each under its field's name as the destination (see `sampling_options`)."""
    parser.add_argument(
        "-k", "--num-return-sequences", type=positive_int, default=5, help="Candidates per prompt (default 5)."
    )
    parser.add_argument(
        "--steps",
        dest="num_inference_steps",
        type=positive_int,
        default=steps,
        help=f"Denoising steps (default {steps}).",
    )
    parser.add_argument(
        "--timesteps",
        type=int,
        nargs="+",
        default=None,
        help="Custom strictly decreasing timesteps, instead of --steps evenly placed ones.",
    )
    parser.add_argument("--rounding", choices=ROUNDINGS, default=None, help=ROUNDING_HELP)
    parser.add_argument("--commit-tokens", action="store_true", help=COMMIT_TOKENS_HELP)
    parser.add_argument(
        "--guidance-scale", type=float, default=1.0, help="Classifier-free guidance (not in the paper); 1 is off."
    )
    parser.add_argument(
        "--stop-when-stable",
        type=positive_int,
        default=None,
        metavar="STEPS",
        help="Finish a candidate once its tokens held for this many steps (default: never).",
    )
    parser.add_argument(
        "--settled-margin",
        type=non_negative_int,
        default=None,
        metavar="POSITIONS",
        help="With --commit-tokens: stop computing the committed pad tail of the canvas, keeping this many "
        "settled positions (default: the whole canvas).",
    )
    parser.add_argument(
        "--canvas-margin",
        dest="settled_margin",
        type=non_negative_int,
        action=DeprecatedOption,
        new_name="--settled-margin",
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--ranking",
        choices=RANKINGS,
        default="log_prob",
        help="How candidates are ranked: mean token log-probability (default), the same without the end token, "
        "or agreement with the other candidates.",
    )
    parser.add_argument(
        "--condition-enhanced-timestep",
        type=non_negative_int,
        default=None,
        metavar="T",
        help="Tell the denoiser this timestep at every step (DINOISER's condition-enhanced sampling, e.g. the "
        "noisiest, num_train_timesteps - 1), so it leans on the prompt (default: off).",
    )
    parser.add_argument(
        "--code-length",
        type=code_length_value,
        default=None,
        metavar="LENGTH",
        help="Sample on a canvas for this many code tokens, 'predicted' (the model's length head) or 'full' "
        "(default: 'predicted' for a model with a length head, else 'full').",
    )
    parser.add_argument(
        "--length-beam",
        type=positive_int,
        default=None,
        metavar="LENGTHS",
        help="With a predicted code length: spread the candidates over this many of the likeliest lengths "
        "(default: 3 on a predicted canvas, at most one per candidate; 1 puts all on the likeliest).",
    )
    parser.add_argument(
        "--draft-candidates",
        type=non_negative_int,
        default=0,
        metavar="K",
        help="With a pipeline that has a retriever: start this many of each prompt's candidates from its nearest "
        "training pairs' code, noised to --strength of the schedule (default 0).",
    )
    parser.add_argument(
        "--strength",
        type=float,
        default=None,
        help="With --draft-candidates (or generate's --init-code): the share of the schedule those candidates run "
        "(default 0.6).",
    )


def sampling_options(args: argparse.Namespace) -> "SamplingOptions":
    """The `SamplingOptions` of the parsed command line: each field from the option of its name."""
    from dataclasses import fields

    from .sampling_options_codefusion import SamplingOptions

    return SamplingOptions(
        **{field.name: getattr(args, field.name) for field in fields(SamplingOptions) if hasattr(args, field.name)}
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="codefusion", description="CodeFusion: natural language to code by diffusion.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="Print ranked code candidates for a prompt.")
    generate.add_argument("model", help="Saved pipeline folder or Hub repo id.")
    generate.add_argument("prompts", nargs="+", metavar="prompt", help="What the code should do (one or more).")
    generate.add_argument("--seed", type=seed_int, default=0, help="Seed of the starting noise (default 0).")
    generate.add_argument("--show-steps", action="store_true", help="Show the best candidate being revised.")
    generate.add_argument("--dtype", choices=DTYPES, default=None, help=DTYPE_HELP)
    add_sampling_arguments(generate, steps=50)
    generate.add_argument(
        "--init-code",
        action="append",
        default=None,
        metavar="CODE",
        help="Refine this program instead of starting from noise: once for every prompt, or once per prompt.",
    )

    evaluate = commands.add_parser("evaluate", help="Top-k metrics of a pipeline on a data file.")
    evaluate.add_argument("model", help="Saved pipeline folder or Hub repo id.")
    evaluate.add_argument("test_file", help="JSON Lines / CSV / Parquet file with prompt and code columns.")
    evaluate.add_argument("--output-dir", required=True, help="Where predictions.jsonl and metrics.json go.")
    evaluate.add_argument("--language", default="bash", help=LANGUAGE_HELP)
    evaluate.add_argument("--prompt-column", default="prompt", help="Column holding the prompt (default prompt).")
    evaluate.add_argument("--code-column", default="code", help="Column holding the reference (default code).")
    evaluate.add_argument("--batch-size", type=positive_int, default=16)
    evaluate.add_argument("--max-samples", type=positive_int, default=None)
    evaluate.add_argument("--seed", type=seed_int, default=0)
    evaluate.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if available).")
    evaluate.add_argument("--dtype", choices=DTYPES, default=None, help=DTYPE_HELP)
    add_sampling_arguments(evaluate, steps=20)

    push = commands.add_parser("push", help="Upload a saved pipeline folder to the Hub.")
    push.add_argument("model", help="Saved pipeline folder.")
    push.add_argument("repo_id", help="Target repo, e.g. user/codefusion-nl2bash.")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", default=None, help="Hub token (default: the logged-in one).")

    demo = commands.add_parser("demo", help="Serve a Gradio demo of a pipeline (needs codefusion-hf[demo]).")
    demo.add_argument("model", help="Saved pipeline folder or Hub repo id.")
    demo.add_argument("--host", default="127.0.0.1", help="Address to serve on (default 127.0.0.1; 0.0.0.0: all).")
    demo.add_argument("--port", type=int, default=None, help="Port (default: Gradio's, 7860 or the next free one).")
    demo.add_argument("--language", choices=LANGUAGES, default="bash", help="Whose syntax the page checks.")
    return parser


def generate(args: argparse.Namespace) -> None:
    import torch

    from .pipeline_codefusion import CodeFusionPipeline

    for prompt in args.prompts:
        if not prompt.strip():
            raise ValueError("a prompt is empty: describe the code to generate.")
    options = sampling_options(args)
    pipe = CodeFusionPipeline.from_pretrained(args.model, dtype=getattr(torch, args.dtype) if args.dtype else None)
    pipe = options.prepare_pipeline(pipe)
    pipe.set_progress_bar_config(disable=True)
    output = pipe(
        args.prompts,
        generator=torch.Generator().manual_seed(args.seed),
        return_trajectory=args.show_steps,
        init_code=args.init_code[0] if args.init_code and len(args.init_code) == 1 else args.init_code,
        **options.call_kwargs(),
    )
    for index, prompt in enumerate(args.prompts):
        if len(args.prompts) > 1:
            if index:
                print()
            print(prompt)
        if args.show_steps:
            for entry in output.trajectory:
                print(f"step {entry['step'] + 1:>4} (t={entry['timestep']:>4}): {entry['code'][index][0]!r}")
            print()
        for rank, (code, score) in enumerate(zip(output.code[index], output.scores[index]), start=1):
            print(f"{rank}. {code}\t(score {score:.3f})")


def evaluate(args: argparse.Namespace) -> None:
    import datasets
    import torch

    from .evaluation_codefusion import evaluate_file

    # Reading one file: the bars and datasets' own log of a parse error would bury the one-line message.
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    metrics = evaluate_file(
        args.model,
        args.test_file,
        args.output_dir,
        prompt_column=args.prompt_column,
        code_column=args.code_column,
        max_samples=args.max_samples,
        language=args.language,
        sampling=sampling_options(args),
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
    )
    print(json.dumps(metrics, indent=2))


def push(args: argparse.Namespace) -> None:
    from .hub_codefusion import upload_pipeline_folder
    from .pipeline_codefusion import CodeFusionPipeline

    commit = upload_pipeline_folder(
        args.model, args.repo_id, token=args.token, private=args.private, pipeline_class=CodeFusionPipeline
    )
    print(f"Pushed {args.model} to {commit.repo_url}")


def demo(args: argparse.Namespace) -> None:
    from .demo_codefusion import launch_demo

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise OSError("codefusion demo needs Gradio: pip install 'codefusion-hf[demo]'.") from None
    launch_demo(args.model, host=args.host, port=args.port, language=args.language)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Loading a small pipeline takes a second: its component and weight bars are noise on a terminal.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        {"generate": generate, "evaluate": evaluate, "push": push, "demo": demo}[args.command](args)
    except MemoryError:
        print(f"codefusion {args.command}: error: {MEMORY_HINT}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # torch's allocators say it this way
        if "can't allocate memory" not in str(error) and "out of memory" not in str(error):
            raise
        print(f"codefusion {args.command}: error: {MEMORY_HINT}", file=sys.stderr)
        return 2
    except USER_ERRORS as error:
        # Hub errors spread what went wrong over several lines ("404 Client Error." first): keep them all, on one.
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
        print(f"codefusion {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
