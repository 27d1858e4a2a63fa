"""Results of several models on one benchmark: a markdown table and a plot of top-k accuracy against k from their
metrics.json files (written by `codefusion evaluate`, baselines/retrieval.py, baselines/train_autoregressive.py),
and optionally a plot of accuracy and time against the number of denoising steps (benchmark_inference_steps.py)
and a table and a plot of accuracy against time of the sampler settings timed by benchmarks/benchmark_generation.py.

    python research/plot_results.py --metrics runs/retrieval/nl2bash-test/metrics.json \
        runs/ar/eval-test-beam/metrics.json --labels retrieval AR --output_prefix docs/images/nl2bash_test
"""

import json
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

KS = (1, 3, 5)
TOP_K_METRICS = {"template_match": "template", "exact_match": "exact"}
OTHER_COLUMNS = {
    "bleu@1": "BLEU@1",
    "codebleu@1": "CodeBLEU@1",
    "syntax_valid@1": "valid@1",
    "distinct_1": "distinct-1",
    "distinct_2": "distinct-2",
    "seconds_per_prompt": "s/prompt",
}


@dataclass
class ResultsArguments:
    output_prefix: str = field(metadata={"help": "Writes <prefix>_topk.png and, with --steps, <prefix>_steps.png."})
    metrics: list[str] = field(default_factory=list, metadata={"help": "metrics.json files, one per model."})
    labels: list[str] = field(default_factory=list, metadata={"help": "One label per metrics file."})
    steps: str | None = field(default=None, metadata={"help": "JSON from benchmark_inference_steps.py."})
    generation: list[str] = field(
        default_factory=list,
        metadata={
            "help": "JSON files of benchmark_generation.py with --eval_samples: prints their table and writes "
            "<prefix>_tradeoff.png."
        },
    )
    threads: int = field(default=2, metadata={"help": "The CPU thread count of the --generation table's times."})


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown_table(results: dict[str, dict]) -> str:
    """Accuracies in percent (top-k of each metric present), BLEU and CodeBLEU on their 0-100 scale, the rest as
    fractions. A column is shown when any model has it."""
    columns = {
        f"{name}@{k}": f"{short}@{k}"
        for name, short in TOP_K_METRICS.items()
        for k in KS
        if any(f"{name}@{k}" in metrics for metrics in results.values())
    }
    others = {key: name for key, name in OTHER_COLUMNS.items() if any(key in metrics for metrics in results.values())}
    header = list(columns.values()) + list(others.values())
    lines = ["| model | " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(header)]
    for label, metrics in results.items():
        cells = [percent(metrics[key]) if key in metrics else "–" for key in columns]
        for key in others:
            value = metrics.get(key)
            cells.append("–" if value is None else f"{value:.1f}" if key.endswith("bleu@1") else f"{value:.3g}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_top_k(results: dict[str, dict], output: str) -> None:
    metrics = [name for name in TOP_K_METRICS if any(f"{name}@1" in m for m in results.values())]
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for axis, name in zip(axes[0], metrics):
        for label, values in results.items():
            points = [(k, 100 * values[f"{name}@{k}"]) for k in KS if f"{name}@{k}" in values]
            axis.plot(*zip(*points), marker="o", label=label)
        axis.set(xlabel="k (candidates)", ylabel=f"top-k {name.replace('_', ' ')} (%)", xticks=KS)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(output, dpi=80)


def plot_steps(steps_file: str, output: str) -> plt.Figure:
    """Accuracy (percent; BLEU in its own points) and time per prompt against the number of denoising steps."""
    with open(steps_file) as f:
        runs = json.load(f)["runs"]
    steps = [run["num_inference_steps"] for run in runs]
    figure, (accuracy, time) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("template_match@1", "template_match@5", "exact_match@1", "exact_match@5", "bleu@1", "syntax_valid@1"):
        if key in runs[0]:
            scale = 1 if key.startswith("bleu") else 100  # BLEU is already in points
            accuracy.plot(steps, [scale * run[key] for run in runs], marker="o", label=key)
    accuracy.set(xscale="log", xlabel="denoising steps", ylabel="% (BLEU: points)", title="accuracy", ylim=(0, None))
    accuracy.legend(fontsize=7)
    time.plot(steps, [run["seconds_per_prompt"] for run in runs], marker="o")
    time.set(xscale="log", xlabel="denoising steps", ylabel="seconds per prompt (k candidates)", title="time")
    for axis in (accuracy, time):
        axis.set_xticks(steps, [str(s) for s in steps])
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(output, dpi=80)
    return figure


def generation_label(setting: str, report: dict) -> str:
    """`codefusion, commit, 10 steps` with its call options and precision, e.g. `commit, 10 steps,
    stop_when_stable=2` or `commit, 10 steps, bf16, compiled`."""
    options = [f"{k}={v}" for k, v in sorted(report.get("pipeline_kwargs", {}).items())]
    if report.get("dtype") == "torch.bfloat16":
        options.append("bf16")
    if report.get("compiled"):
        options.append("compiled")
    return ", ".join([setting.removeprefix("codefusion, "), *options])


def generation_table(files: list[str], threads: int = 2) -> str:
    """A markdown row per timed setting of `files`: its median seconds for 1 and for 32 prompts with `threads` CPU
    threads, each with its ratio to the baseline's beam search timed in the same run, the FLOPs of the 32-prompt
    call, and the validation scores with the seconds per prompt of that evaluation."""
    lines = [
        "| setting | 1 prompt: s (x beam 5) | 32 prompts: s (x beam 5) | GFLOP, 32 prompts | template@1 | template@5 "
        "| BLEU@1 | s/prompt, validation |",
        "| --- |" + " ---: |" * 7,
    ]
    for path in files:
        with open(path) as f:
            report = json.load(f)
        timed = {row["prompts"]: row for row in report["results"] if row["threads"] == threads}
        for setting, metrics in report.get("validation", {}).items():
            cells = [generation_label(setting, report)]
            for prompts in (1, 32):
                row = timed.get(prompts)
                cells.append(
                    "–"
                    if row is None
                    else f"{row['settings'][setting]['median_seconds']:.3f} ({row['ratio_to_beam_5'][setting]:.2f}x)"
                )
            flops = timed[32]["settings"][setting].get("flops") if 32 in timed else None
            cells.append("–" if flops is None else f"{flops / 1e9:,.0f}")
            cells += [percent(metrics["template_match@1"]), percent(metrics["template_match@5"])]
            cells += [f"{metrics['bleu@1']:.2f}", f"{metrics['seconds_per_prompt']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_generation(files: list[str], output: str) -> plt.Figure:
    """Top-1 BLEU and top-5 template match against seconds per prompt (k candidates, the evaluation's batches) of
    every sampler setting in `files`, one point each."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for path in files:
        with open(path) as f:
            report = json.load(f)
        for setting, metrics in report.get("validation", {}).items():
            label = generation_label(setting, report)
            for axis, key, scale in ((axes[0], "bleu@1", 1), (axes[1], "template_match@5", 100)):
                axis.scatter(metrics["seconds_per_prompt"], scale * metrics[key], label=label)
    for axis, name in zip(axes, ("BLEU@1 (points)", "template match@5 (%)")):
        axis.set(xlabel="seconds per prompt (5 candidates)", ylabel=name, ylim=(0, None), xlim=(0, None))
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    figure.tight_layout()
    figure.savefig(output, dpi=80)
    return figure


def main():
    (args,) = HfArgumentParser(ResultsArguments).parse_args_into_dataclasses()
    if len(args.metrics) != len(args.labels):
        raise ValueError(f"--labels has {len(args.labels)} entries for {len(args.metrics)} --metrics files.")
    results = {}
    for label, path in zip(args.labels, args.metrics):
        with open(path) as f:
            results[label] = json.load(f)
    if results:
        print(markdown_table(results))
        plot_top_k(results, f"{args.output_prefix}_topk.png")
    if args.steps:
        plot_steps(args.steps, f"{args.output_prefix}_steps.png")
    if args.generation:
        print(generation_table(args.generation, args.threads))
        plot_generation(args.generation, f"{args.output_prefix}_tradeoff.png")


if __name__ == "__main__":
    main()
