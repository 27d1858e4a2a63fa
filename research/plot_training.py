"""Plot loss terms and generation metrics from one or more `trainer_state.json` files (e.g. phase 1 and phase 2).

    python research/plot_training.py --states runs/nl2bash-pretrain/trainer_state.json \
        runs/nl2bash-finetune/trainer_state.json --labels "phase 1" "phase 2" --output docs/images/nl2bash_training.png
"""

import json
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

LOSS_TERMS = ("loss", "noise_loss", "embedding_loss", "decoder_loss")
GENERATION_METRICS = ("eval_exact_match", "eval_template_match", "eval_non_empty_rate", "eval_distinct_rate")


@dataclass
class PlotArguments:
    states: list[str] = field(metadata={"help": "trainer_state.json files, in training order."})
    output: str = field(metadata={"help": "PNG file to write."})
    labels: list[str] | None = field(default=None, metadata={"help": "One label per state file."})


def main():
    (args,) = HfArgumentParser(PlotArguments).parse_args_into_dataclasses()
    labels = args.labels or args.states
    figure, (losses, metrics) = plt.subplots(1, 2, figsize=(11, 4))
    for state_file, label in zip(args.states, labels):
        with open(state_file) as f:
            history = json.load(f)["log_history"]
        for term in LOSS_TERMS:
            points = [(entry["step"], entry[term]) for entry in history if term in entry]
            if points:
                losses.plot(*zip(*points), label=f"{label}: {term}")
        for name in GENERATION_METRICS:
            points = [(entry["step"], entry[name]) for entry in history if name in entry]
            if points:
                metrics.plot(*zip(*points), marker="o", label=f"{label}: {name.removeprefix('eval_')}")
    losses.set(yscale="log", xlabel="step", title="training loss terms")
    metrics.set(xlabel="step", ylim=(0, 1), title="validation generation (top-1)")
    for axis in (losses, metrics):
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.output, dpi=80)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
