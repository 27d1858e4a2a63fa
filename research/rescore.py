"""Re-score saved evaluations with the current metrics, without generating again.

    python research/rescore.py --evaluations runs/eval/nl2bash-validation runs/retrieval/nl2bash-test

Each folder holds the predictions.jsonl and metrics.json that `codefusion evaluate` (or a baseline script) wrote.
The metrics computed from the candidates are replaced in metrics.json; what describes the run (model, machine,
seconds per prompt, steps, rounding) is kept. Use it when a metric's definition changes, so that old and new
numbers stay comparable (template match's rule for negative numbers, 2026-11-26).
"""

import json
import os
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from codefusion_hf.constants import LANGUAGE_HELP
from codefusion_hf.evaluation_codefusion import score_candidates
from codefusion_hf.hub_codefusion import write_atomically


@dataclass
class RescoreArguments:
    evaluations: list[str] = field(metadata={"help": "Folders with predictions.jsonl and metrics.json."})
    language: str = field(default="bash", metadata={"help": f"As evaluated: {LANGUAGE_HELP}"})


def rescore(folder: str, language: str) -> dict:
    """Recompute `folder`'s metrics from its predictions.jsonl and rewrite its metrics.json; return what it wrote."""
    paths = {name: os.path.join(folder, name) for name in ("predictions.jsonl", "metrics.json")}
    for path in paths.values():
        if not os.path.isfile(path):
            raise ValueError(f"evaluations: {path} is missing; give folders written by `codefusion evaluate`.")
    with open(paths["predictions.jsonl"]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with open(paths["metrics.json"]) as f:
        metrics = json.load(f)
    scored = score_candidates([row["candidates"] for row in rows], [row["reference"] for row in rows], language)
    old_metrics, new_metrics = ({name.split("@")[0] for name in m if "@" in name} for m in (metrics, scored))
    if old_metrics != new_metrics:  # e.g. Python predictions re-scored as Bash: the wrong metrics would survive
        raise ValueError(
            f"language={language!r} computes {sorted(new_metrics)} but {paths['metrics.json']} has "
            f"{sorted(old_metrics)}: give the --language the folder was evaluated with."
        )
    metrics |= {name: value for name, value in scored.items() if name != "machine"}  # the machine that generated
    write_atomically(paths["metrics.json"], json.dumps(metrics, indent=2))  # the run facts live only here
    return metrics


def main() -> None:
    (args,) = HfArgumentParser(RescoreArguments).parse_args_into_dataclasses()
    for folder in args.evaluations:
        metrics = rescore(folder, args.language)
        shown = {name: round(value, 4) for name, value in metrics.items() if "@" in name}
        print(folder, json.dumps(shown))


if __name__ == "__main__":
    main()
