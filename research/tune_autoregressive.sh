#!/usr/bin/env bash
# The tuned autoregressive baseline (issue 21's fair comparison): research/configs/nl2bash_autoregressive.json
# trained once per learning rate, side by side on this machine's CPU (one thread each, the same seed and wall-clock
# budget, the last quarter annealed), with weight decay 0.01, the decoder's dropout (BERT's 0.1), 100 warmup steps
# and early stopping on the validation loss (patience 3 evaluations, one every 100 steps); each run ends with its
# best checkpoint's model and is evaluated on the full NL2Bash validation split (beam 5, k = 5). The learning rate
# to keep is the one of the lowest validation loss (printed at the end; each run's trainer_state.json has its log).
#
#   bash research/tune_autoregressive.sh OUTPUT_DIR MINUTES CODE_TOKENIZER LEARNING_RATE [LEARNING_RATE ...]
#
# CODE_TOKENIZER: the CodeFusion run's code tokenizer (e.g. a saved pipeline's tokenizer/ folder), so that both
# models share it. DATA: the folder of train/validation.jsonl (default data/nl2bash); TRAIN_FILE another training file
# in it; NUM_NEIGHBORS=k appends the code of the k nearest training pairs (BM25, or the dense MiniLM retriever's with
# RETRIEVAL_MODE=dense) to each prompt (default 0). PYTHON picks the interpreter (default python3).
set -euo pipefail
python=${PYTHON:-python3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if (($# < 4)); then
  echo "tune_autoregressive.sh: give OUTPUT_DIR MINUTES CODE_TOKENIZER and at least one LEARNING_RATE" >&2
  exit 2
fi
out=$1 minutes=$2 tokenizer=$3 data=${DATA:-data/nl2bash}
train_file=${TRAIN_FILE:-$data/train.jsonl}
shift 3
mkdir -p "$out"
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
decay=$("$python" -c "print(float('$minutes') / 4)")
for rate in "$@"; do
  (cd "$root" && "$python" -m research.baselines.train_autoregressive research/configs/nl2bash_autoregressive.json \
    --tokenizer_name_or_path "$tokenizer" --output_dir "$out/lr$rate" --learning_rate "$rate" --weight_decay 0.01 \
    --max_train_minutes "$minutes" --lr_decay_minutes "$decay" --warmup_steps 100 --eval_steps 100 --save_steps 100 \
    --early_stopping_patience 3 --train_file "$train_file" --validation_file "$data/validation.jsonl" \
    --num_neighbors "${NUM_NEIGHBORS:-0}" --retrieval_mode "${RETRIEVAL_MODE:-bm25}" \
    --test_file "$data/validation.jsonl" --eval_output_dir "$out/eval-lr$rate") \
    >"$out/lr$rate.log" 2>&1 &
done
wait
for rate in "$@"; do
  "$python" - "$out/lr$rate" <<'PY'
import json, sys
state = json.load(open(f"{sys.argv[1]}/trainer_state.json"))
losses = [row["eval_loss"] for row in state["log_history"] if "eval_loss" in row]
print(f"{sys.argv[1]}: best validation loss {min(losses):.4f} of {len(losses)} evaluations, "
      f"{state['global_step']} steps, best checkpoint {state['best_model_checkpoint']}")
PY
done
