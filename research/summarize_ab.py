"""Collect an A/B of research/lever_ab.sh into one results JSON: each arm's steps and final evaluation loss (from its
trainer_state.json), its validation metrics (eval-NAME/metrics.json) and its sign tests against the control
(NAME_vs_CONTROL.json), plus any extra evaluations of an arm (eval-NAME-SUFFIX/, e.g. another sampler setting, with
its sign tests against the arm's own evaluation in NAME-SUFFIX_vs_NAME.json).

    python research/summarize_ab.py OUT --command "<the lever_ab.sh command>" --machine "<the CPU, threads>" \
        --output research/results/<name>.json
"""

import argparse
import json
from pathlib import Path


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(out: Path) -> dict:
    """Every arm of the A/B in `out` (an arm is a folder with a trainer_state.json and an eval-NAME/ folder)."""
    arms = {}
    for state_path in sorted(out.glob("*/trainer_state.json")):
        name = state_path.parent.name
        state = json.loads(state_path.read_text())
        losses = [row["eval_loss"] for row in state["log_history"] if "eval_loss" in row]
        arm = {"steps": state["global_step"], "eval_loss": losses[-1] if losses else None}
        arm["validation"] = read_json(out / f"eval-{name}" / "metrics.json")
        arm["extra_evaluations"] = {}
        for folder in sorted(path for path in out.glob(f"eval-{name}-*") if path.is_dir()):
            suffix = folder.name.removeprefix(f"eval-{name}-")
            comparison = read_json(out / f"{name}-{suffix}_vs_{name}.json")
            arm["extra_evaluations"][suffix] = {
                "validation": read_json(folder / "metrics.json"),
                "sign_tests": None if comparison is None else comparison["comparisons"],
            }
        arm["sign_tests"] = {
            path.stem.removeprefix(f"{name}_vs_"): json.loads(path.read_text())["comparisons"]
            for path in sorted(out.glob(f"{name}_vs_*.json"))
        }
        arms[name] = arm
    if not arms:
        raise SystemExit(f"summarize_ab.py: no arm (a folder with trainer_state.json) in {out}")
    return arms


def results_parser(description: str, runs: str) -> argparse.ArgumentParser:
    """The arguments of a script that collects the OUT_DIR of `runs` into a results JSON, with how it ran."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help=f"The OUTPUT_DIR of {runs}.")
    parser.add_argument("--command", required=True, help="The command that ran it.")
    parser.add_argument("--machine", required=True, help="The machine and threads it ran on.")
    parser.add_argument("--date", required=True, help="The day it ran (YYYY-MM-DD).")
    parser.add_argument("--output", type=Path, required=True, help="The results JSON to write.")
    return parser


def main() -> None:
    args = results_parser(__doc__, "research/lever_ab.sh").parse_args()
    summary = {"date": args.date, "command": args.command, "machine": args.machine, "arms": summarize(args.out)}
    args.output.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.output}: arms {', '.join(summary['arms'])}")


if __name__ == "__main__":
    main()
