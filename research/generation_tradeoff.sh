#!/usr/bin/env bash
# Generation speed against accuracy of one trained pipeline: benchmarks/benchmark_generation.py for each sampler
# setting the Sampling page compares (the committing sampler in 5 and 10 steps, DDIM in 10, early stopping and the cut
# canvas), each timed at 1 and 32 prompts x 5 candidates against the autoregressive baseline's generate() and scored on
# the first EVAL_SAMPLES validation prompts, then the trade-off plot.
#
#   bash research/generation_tradeoff.sh PIPELINE OUT_DIR [EVAL_SAMPLES] [THREADS] [BASELINE]
#
# Run from anywhere; OUT_DIR gets one JSON per setting and generation_tradeoff.png. The first setting is timed with 1
# and 2 CPU threads, the others with THREADS (default 2). BASELINE is a trained autoregressive baseline (a folder of
# research/baselines/train_autoregressive.py); without it the baseline has random weights and a fixed output length.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pipeline=$1 out=$2 eval_samples=${3:-200} threads=${4:-2} baseline=${5:-}
mkdir -p "$out"
baseline_option=()
[[ -n $baseline ]] && baseline_option=(--baseline "$baseline")
python=${PYTHON:-python3}
run() {  # NAME THREADS SAMPLERS STEPS PIPELINE_KWARGS [OPTIONS]
  # shellcheck disable=SC2086
  (cd "$root" && "$python" -m benchmarks.benchmark_generation --pipeline "$pipeline" "${baseline_option[@]}" \
    --threads $2 --samplers $3 --steps "$4" --pipeline_kwargs "$5" --eval_samples "$eval_samples" \
    --output "$out/$1.json" ${6:-})
}
run commit10 "1 2" "commit ddim" 10 '{}'
run commit5 "$threads" commit 5 '{}'
run commit10_margin4 "$threads" commit 10 '{"settled_margin": 4}'
run commit10_stable2 "$threads" commit 10 '{"stop_when_stable": 2}'
run commit10_margin4_stable2 "$threads" commit 10 '{"settled_margin": 4, "stop_when_stable": 2}'
run commit10_bf16 "$threads" commit 10 '{}' --bf16
run commit10_bf16_compiled "$threads" commit 10 '{}' "--bf16 --compile"
run commit10_bf16_stable2 "$threads" commit 10 '{"stop_when_stable": 2}' --bf16
run commit5_bf16 "$threads" commit 5 '{}' --bf16
(cd "$root" && "$python" research/plot_results.py --output_prefix "$out/generation" --generation "$out"/commit*.json)
