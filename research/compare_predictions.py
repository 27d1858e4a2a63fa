"""Paired comparison of two evaluations of the same prompts (predictions.jsonl files written by `codefusion evaluate`
or a baseline script): the prompts each one solves at k, the prompts only one of them solves, and the exact two-sided
sign test on those (scipy's binomial test). With one seed per model, this says whether a difference in top-k
accuracy is larger than the luck of which prompts happen to flip.

    python research/compare_predictions.py --baseline runs/a/predictions.jsonl --candidate runs/b/predictions.jsonl \
        --language bash --ks 1 5 --output runs/a_vs_b.json
"""

import json
from dataclasses import dataclass, field

from scipy.stats import binomtest
from transformers import HfArgumentParser

from codefusion_hf.constants import LANGUAGE_HELP
from codefusion_hf.evaluation_codefusion import LANGUAGE_METRICS, check_language
from codefusion_hf.metrics import solved_at_k


@dataclass
class CompareArguments:
    baseline: str = field(metadata={"help": "predictions.jsonl of the model to compare against."})
    candidate: str = field(metadata={"help": "predictions.jsonl of the other model, on the same prompts."})
    language: str = field(default="bash", metadata={"help": LANGUAGE_HELP + " Bash compares template match."})
    ks: list[int] = field(default_factory=lambda: [1, 5], metadata={"help": "The k of each top-k comparison."})
    output: str | None = field(default=None, metadata={"help": "Also write the comparison to this JSON file."})


def read_predictions(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def compare(baseline: list[dict], candidate: list[dict], metric: str, k: int) -> dict:
    """Prompts solved at k by each, by only one of them, and the sign test's two-sided p-value on the latter."""
    if [row["prompt"] for row in baseline] != [row["prompt"] for row in candidate]:
        raise ValueError("baseline and candidate must hold the same prompts in the same order.")
    references = [row["reference"] for row in baseline]
    old = solved_at_k([row["candidates"] for row in baseline], references, metric, k)
    new = solved_at_k([row["candidates"] for row in candidate], references, metric, k)
    only_old = sum(a and not b for a, b in zip(old, new))
    only_new = sum(b and not a for a, b in zip(old, new))
    discordant = only_old + only_new
    return {
        "metric": f"{metric}@{k}",
        "prompts": len(references),
        "baseline_solved": sum(old),
        "candidate_solved": sum(new),
        "only_baseline": only_old,
        "only_candidate": only_new,
        "p_value": binomtest(only_new, discordant).pvalue if discordant else 1.0,
    }


def main() -> None:
    (args,) = HfArgumentParser(CompareArguments).parse_args_into_dataclasses()
    check_language(args.language)
    if any(k < 1 for k in args.ks):
        raise ValueError(f"ks must be positive, got {args.ks}.")
    metric = LANGUAGE_METRICS.get(args.language, ["exact_match"])[-1]
    baseline, candidate = read_predictions(args.baseline), read_predictions(args.candidate)
    results = [compare(baseline, candidate, metric, k) for k in args.ks]
    for result in results:
        print(json.dumps(result))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"baseline": args.baseline, "candidate": args.candidate, "comparisons": results}, f, indent=2)


if __name__ == "__main__":
    main()
