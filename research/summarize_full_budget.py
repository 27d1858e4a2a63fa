"""Collect the OUT_DIR of research/full_budget.sh into one results JSON: each model's training (steps and evaluation
losses, from its trainer_state.json), the metrics of every evaluation (eval-NAME/metrics.json) and every paired sign
test (NAME_vs_OTHER.json), and, with --predictions, each evaluation's predictions gzipped into that folder.

    python -m research.summarize_full_budget OUT --command "<the full_budget.sh command>" --machine "<the CPU>" \
        --date YYYY-MM-DD --output research/results/<name>.json --predictions research/results/<name>/
"""

import gzip
import json
import shutil
from pathlib import Path

from research.summarize_ab import results_parser

MODELS = {"codefusion": "cf", "autoregressive": "ar/lr1e-3"}


def training_summary(folder: Path) -> dict:
    state = json.loads((folder / "trainer_state.json").read_text())
    losses = [row["eval_loss"] for row in state["log_history"] if "eval_loss" in row]
    return {
        "steps": state["global_step"],
        "eval_losses": len(losses),
        "best_eval_loss": min(losses) if losses else None,
        "best_model_checkpoint": state.get("best_model_checkpoint"),
    }


def summarize(out: Path) -> dict:
    missing = [folder for folder in MODELS.values() if not (out / folder / "trainer_state.json").is_file()]
    if missing:
        raise SystemExit(f"summarize_full_budget.py: no trainer_state.json in {', '.join(missing)} of {out}")
    return {
        "training": {name: training_summary(out / folder) for name, folder in MODELS.items()},
        "evaluations": {
            folder.name.removeprefix("eval-"): json.loads((folder / "metrics.json").read_text())
            for folder in sorted(out.glob("eval-*"))
            if (folder / "metrics.json").is_file()
        },
        "sign_tests": {
            path.stem: json.loads(path.read_text())["comparisons"] for path in sorted(out.glob("*_vs_*.json"))
        },
    }


def main() -> None:
    parser = results_parser(__doc__, "research/full_budget.sh")
    parser.add_argument("--predictions", type=Path, help="A folder for each evaluation's predictions, gzipped.")
    args = parser.parse_args()
    summary = {"date": args.date, "command": args.command, "machine": args.machine} | summarize(args.out)
    args.output.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.output}: evaluations {', '.join(summary['evaluations'])}")
    if args.predictions:
        args.predictions.mkdir(parents=True, exist_ok=True)
        for name in summary["evaluations"]:
            source = args.out / f"eval-{name}" / "predictions.jsonl"
            with source.open("rb") as plain, gzip.open(args.predictions / f"{name}.jsonl.gz", "wb") as packed:
                shutil.copyfileobj(plain, packed)
        print(f"wrote {len(summary['evaluations'])} predictions files to {args.predictions}")


if __name__ == "__main__":
    main()
