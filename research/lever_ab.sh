#!/usr/bin/env bash
# Levers, A/B: the quickstart recipe trained once per arm, all arms side by side on this machine's CPU (one thread
# each, the same seed and wall-clock budget, the last quarter annealed), each arm with its own finetune.py flags, from
# the same starting pipeline when START is set. The first arm is the control. Every arm is evaluated on NL2Bash
# validation (k = 5, the commit scheduler in 10 steps) and compared with the control prompt by prompt with the sign
# test (research/compare_predictions.py, template match at 1 and 5).
#
#   [START=PIPELINE] [EVAL_FLAGS=...] [EVAL_SAMPLES=N] bash research/lever_ab.sh OUTPUT_DIR MINUTES \
#       control="FLAGS" NAME="FLAGS" [NAME="FLAGS" ...]
#
# START: a saved pipeline every arm continues from (its tokenizer is used); without it every arm starts from scratch
# with a tokenizer trained here. EVAL_FLAGS: extra `codefusion evaluate` flags for every arm (e.g. "--dtype
# bfloat16"; an arm's own evaluation flags go in EVAL_FLAGS_<NAME>). EVAL_SAMPLES validation prompts (default all
# 1,008). More arms than cores share them: each arm gets the same wall-clock budget, so fewer steps. Each arm's log
# ends with its step count; NAME_vs_CONTROL.json holds each comparison. PYTHON picks the interpreter (default python3).
set -euo pipefail
python=${PYTHON:-python3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$1 minutes=$2
shift 2
if (($# < 2)); then
  echo "lever_ab.sh: give at least two arms, NAME=\"FLAGS\", the control first" >&2
  exit 2
fi
names=() flags=()
for arm in "$@"; do
  if [[ "$arm" != *=* || ! "${arm%%=*}" =~ ^[A-Za-z0-9_]+$ ]]; then
    echo "lever_ab.sh: an arm is NAME=\"FLAGS\" (NAME of letters, digits and _), got '$arm'" >&2
    exit 2
  fi
  names+=("${arm%%=*}") flags+=("${arm#*=}")
done
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
for i in "${!names[@]}"; do
  # shellcheck disable=SC2086
  (cd "$root" && "$python" examples/text_to_code/finetune.py examples/text_to_code/configs/quickstart.json \
    --tokenizer_name_or_path "$tokenizer" --output_dir "$out/${names[$i]}" --max_train_minutes "$minutes" \
    --lr_decay_minutes "$decay" --disable_tqdm True --generation_eval_samples 0 "${start[@]}" ${flags[$i]}) \
    >"$out/${names[$i]}.log" 2>&1 &
done
wait
for name in "${names[@]}"; do
  own=EVAL_FLAGS_$name
  # shellcheck disable=SC2086
  "$python" -m codefusion_hf.cli evaluate "$out/$name" "$root/data/nl2bash/validation.jsonl" --commit-tokens \
    --steps 10 -k 5 --output-dir "$out/eval-$name" ${EVAL_SAMPLES:+--max-samples "$EVAL_SAMPLES"} \
    ${EVAL_FLAGS:-} ${!own:-} >"$out/eval-$name.log" 2>&1 &
done
wait
for name in "${names[@]:1}"; do
  "$python" "$root/research/compare_predictions.py" --baseline "$out/eval-${names[0]}/predictions.jsonl" \
    --candidate "$out/eval-$name/predictions.jsonl" --language bash --ks 1 5 \
    --output "$out/${name}_vs_${names[0]}.json"
done
