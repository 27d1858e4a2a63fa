#!/usr/bin/env bash
# One lever, A/B: the quickstart recipe trained twice side by side on this machine's CPU (one thread each, the same
# seed and wall-clock budget, the last quarter annealed), arm "control" with CONTROL_FLAGS and arm "lever" with
# LEVER_FLAGS (any finetune.py flags), from the same starting pipeline when START is set. Both are evaluated on NL2Bash
# validation (k = 5, the commit scheduler in 10 steps) and compared prompt by prompt with the sign test
# (research/compare_predictions.py, template match at 1 and 5).
#
#   [START=PIPELINE] [EVAL_FLAGS=...] bash research/lever_ab.sh OUTPUT_DIR MINUTES "CONTROL_FLAGS" "LEVER_FLAGS" \
#       [EVAL_SAMPLES]
#
# START: a saved pipeline both arms continue from (its tokenizer is used); without it both start from scratch with a
# tokenizer trained here. EVAL_FLAGS: extra `codefusion evaluate` flags for both arms (e.g. "--dtype bfloat16").
# EVAL_SAMPLES validation prompts (default all 1,008). Each arm's log ends with its step count; lever_vs_control.json
# holds the comparison. PYTHON picks the interpreter (default python3).
set -euo pipefail
python=${PYTHON:-python3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$1 minutes=$2 control=$3 lever=$4 samples=${5:-}
mkdir -p "$out"
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "${START:-}" ]]; then
  tokenizer=$START/tokenizer start=(--model_name_or_path "$START")
else
  tokenizer=$out/tokenizer start=()
  "$python" "$root/examples/text_to_code/train_tokenizer.py" --train_files "$root/data/nl2bash/train.jsonl" \
    --vocab_size 8000 --output_dir "$tokenizer" >"$out/tokenizer.log" 2>&1
fi
decay=$("$python" -c "print(float('$minutes') / 4)")
train() {  # arm name, its flags
  # shellcheck disable=SC2086
  (cd "$root" && "$python" examples/text_to_code/finetune.py examples/text_to_code/configs/quickstart.json \
    --tokenizer_name_or_path "$tokenizer" --output_dir "$out/$1" --max_train_minutes "$minutes" \
    --lr_decay_minutes "$decay" --disable_tqdm True "${start[@]}" $2) >"$out/$1.log" 2>&1
}
train control "$control" &
train lever "$lever" &
wait
for name in control lever; do
  # shellcheck disable=SC2086
  "$python" -m codefusion_hf.cli evaluate "$out/$name" "$root/data/nl2bash/validation.jsonl" --commit-tokens \
    --steps 10 -k 5 --output-dir "$out/eval-$name" ${samples:+--max-samples "$samples"} ${EVAL_FLAGS:-} \
    >"$out/eval-$name.log" 2>&1 &
done
wait
"$python" "$root/research/compare_predictions.py" --baseline "$out/eval-control/predictions.jsonl" \
  --candidate "$out/eval-lever/predictions.jsonl" --language bash --ks 1 5 --output "$out/lever_vs_control.json"
