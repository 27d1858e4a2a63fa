#!/usr/bin/env bash
# Does trimming the training canvas change what CodeFusion learns? The quickstart recipe trained twice side by side
# on this machine's CPU (one thread each, the same seed and wall-clock budget): arm "full" on the whole 64-position
# canvas, arm "trim" with --canvas_margin MARGIN and --train_sampling_strategy group_by_length. Both are evaluated on
# NL2Bash validation (k = 5, the commit scheduler in 10 steps) and compared prompt by prompt
# (research/compare_predictions.py, template match).
#
#   bash research/canvas_trim_ab.sh OUTPUT_DIR [MINUTES] [MARGIN] [EVAL_SAMPLES]
#
# MINUTES of training per arm (default 15, the last quarter annealed), MARGIN pad positions past the batch's longest
# code (default 4), EVAL_SAMPLES validation prompts (default all 1,008). Each arm's training log ends with its step
# count and its eval loss on the full canvas (trainer_state.json). PYTHON picks the interpreter (default python3).
set -euo pipefail
python=${PYTHON:-python3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$1 minutes=${2:-15} margin=${3:-4} samples=${4:-}
mkdir -p "$out"
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
"$python" "$root/examples/text_to_code/train_tokenizer.py" --train_files "$root/data/nl2bash/train.jsonl" \
  --vocab_size 8000 --output_dir "$out/tokenizer" >"$out/tokenizer.log" 2>&1
decay=$("$python" -c "print(float('$minutes') / 4)")
train() {  # arm name, extra training flags
  local name=$1
  shift
  (cd "$root" && "$python" examples/text_to_code/finetune.py examples/text_to_code/configs/quickstart.json \
    --tokenizer_name_or_path "$out/tokenizer" --output_dir "$out/$name" --max_train_minutes "$minutes" \
    --lr_decay_minutes "$decay" --disable_tqdm True "$@") >"$out/$name.log" 2>&1
}
train full &
train trim --canvas_margin "$margin" --train_sampling_strategy group_by_length &
wait
for name in full trim; do
  "$python" -m codefusion_hf.cli evaluate "$out/$name" "$root/data/nl2bash/validation.jsonl" --commit-tokens \
    --steps 10 -k 5 --output-dir "$out/eval-$name" ${samples:+--max-samples "$samples"} >"$out/eval-$name.log" 2>&1 &
done
wait
"$python" "$root/research/compare_predictions.py" --baseline "$out/eval-full/predictions.jsonl" \
  --candidate "$out/eval-trim/predictions.jsonl" --language bash --ks 1 5 --output "$out/trim_vs_full.json"
