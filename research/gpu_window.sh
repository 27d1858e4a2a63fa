#!/usr/bin/env bash
# One prepared GPU window, for a fresh GPU machine without network (one command of at most 9 minutes): unpack the
# offline bundle, train CodeFusion (the NL2Bash sweeps' best recipe, PRESET-sized) and the autoregressive baseline side
# by side on the GPU for the same wall-clock budget, both with the learning rate annealed over the last quarter, then
# evaluate both on NL2Bash validation and test (k = 5; CodeFusion with the commit scheduler in 10 steps, the baseline
# with beam search and with sampling). On a GPU it first measures training throughput (benchmarks/benchmark_training.py,
# the paper preset and the quickstart recipe in bf16, against the bf16 matmul peak), and after training times the two
# trained models' generation against each other (benchmarks/benchmark_generation.py, bf16, at most a minute). OUT_DIR
# gets at most 8 files: gpu.csv (utilisation every 5 s), unpack.log, benchmark_paper.json, benchmark_small.json,
# sweep.log, benchmark_generation.json, summary.json (the top-k metrics of every evaluation) and results.tar.xz
# (metrics, predictions, training logs and states; no weights).
#
#   bash research/gpu_window.sh BUNDLE_DIR OUT_DIR [PRETRAIN_MINUTES] [FINETUNE_MINUTES]
#
# BUNDLE_DIR comes from `bash research/offline_bundle.sh pack BUNDLE_DIR` and travels with the repository; `none` uses
# this Python environment and ENCODER, TOKENIZER and DATA from the environment instead, for a dry run on a CPU (with
# USE_CPU=True BF16=False EVAL_SAMPLES=8 and budgets of a few seconds). PRESET (default small) sizes CodeFusion.
# The default budget, 1 + 3 minutes of training (phase 1 + 2; the baseline trains 4), leaves about 2 minutes for the
# throughput measurements, 1 for the generation benchmark and 3 for unpacking and evaluating.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bundle=$1 out=$2 pretrain_minutes=${3:-1} finetune_minutes=${4:-3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 >"$out/gpu.csv" &
  smi=$!
fi
if [[ $bundle != none ]]; then
  bash "$root/research/offline_bundle.sh" unpack "$bundle" "$work/cf" >"$out/unpack.log" 2>&1 || exit 3
  # shellcheck disable=SC1091
  source "$work/cf/env.sh"
fi
: "${ENCODER:?set ENCODER, as the env.sh of the offline bundle does}" "${TOKENIZER:?set TOKENIZER}" "${DATA:?set DATA}"
recipe='"normalize_code_embeddings":true,"prediction_type":"sample","self_condition":true,"unroll_probability":0.5'
preset=${PRESET:-small}
if command -v nvidia-smi >/dev/null; then  # training throughput against the H200's bf16 peak (issue targets)
  for recipe_batch in "paper 256" "quickstart 1024"; do
    read -r bench_recipe bench_batch <<<"$recipe_batch"
    (cd "$root" && timeout 60 "${PYTHON:-python3}" -m benchmarks.benchmark_training --recipe "$bench_recipe" \
      --device cuda --bf16 --batch_size "$bench_batch" --steps 10 --warmup 3 --profile_steps 2 \
      --output "$out/benchmark_${bench_recipe/quickstart/small}.json") >>"$out/unpack.log" 2>&1
  done
fi
VARIANTS="codefusion-$preset $pretrain_minutes {$recipe} --timestep_bias_strategy later --timestep_bias_multiplier 3 \
--preset $preset" ROUNDINGS=commit LR_DECAY=0.25 \
  bash "$root/research/nl2bash_gpu_sweep.sh" "$work/sweep" "$ENCODER" "$TOKENIZER" "$DATA" "$pretrain_minutes" \
  "$finetune_minutes" >"$out/sweep.log" 2>&1
status=$?
if command -v nvidia-smi >/dev/null; then  # the trained models' generation on the GPU (issue 20's CUDA ratios)
  (cd "$root" && timeout 60 "${PYTHON:-python3}" -m benchmarks.benchmark_generation \
    --pipeline "$work/sweep/codefusion-$preset/finetune" --baseline "$work/sweep/autoregressive" --device cuda --bf16 \
    --samplers commit --steps 10 --threads 2 --repeats 5 --output "$out/benchmark_generation.json") \
    >>"$out/sweep.log" 2>&1
fi
[[ -n ${smi:-} ]] && kill "$smi"
"${PYTHON:-python3}" - "$work/sweep" "$out/summary.json" <<'PY'
import json, pathlib, sys
sweep, summary = pathlib.Path(sys.argv[1]), {}
for path in sorted(sweep.glob("*/eval-*/metrics.json")):
    metrics = json.loads(path.read_text())
    summary[f"{path.parent.parent.name}/{path.parent.name}"] = {
        k: v for k, v in metrics.items() if "@" in k or k in ("num_prompts", "seconds_per_prompt", "machine")
    }
pathlib.Path(sys.argv[2]).write_text(json.dumps(summary, indent=2))
print(f"{len(summary)} evaluations summarised")
PY
tar -C "$work" -cJf "$out/results.tar.xz" --exclude='*.safetensors' --exclude='checkpoint-*' --exclude='*.bin' \
  --exclude='*.pt' sweep
exit "$status"
