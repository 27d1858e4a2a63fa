#!/usr/bin/env bash
# Issue 21's full-budget comparison on this machine's CPU: CodeFusion with the levers that won their A/Bs (the
# quickstart recipe with a length head, the clip min_train_timestep=600, trained on TRAIN_FILE, e.g. the mixed
# distilled file of research/distill_autoregressive.py) against the tuned autoregressive baseline (lr 1e-3, the best
# of four rates on validation; research/tune_autoregressive.sh), both MINUTES on one thread each, side by side, the
# last quarter annealed. Then both on the NL2Bash validation and test splits (CodeFusion: committing sampler, 10
# steps, k = 5, bf16, the predicted canvas; the baseline: beam 5), the TF-IDF retrieval floor on both, and paired
# sign tests of CodeFusion against each.
#
#   bash research/full_budget.sh OUT_DIR MINUTES CODE_TOKENIZER TRAIN_FILE [NAME="EVALUATE FLAGS" ...]
#
# Each NAME="FLAGS" is one more CodeFusion sampler setting on validation (e.g. beam5="--length-beam 5"), with its sign
# test against the default setting. The test evaluation takes the setting of the best validation template match
# (top-1 plus top-5; the default on a tie), written to OUT_DIR/test_flags.txt, unless TEST_FLAGS gives its flags. STAGE=evaluate skips the training (both models already in OUT_DIR/cf and OUT_DIR/ar/lr1e-3).
# DATA: the folder of train/validation/test.jsonl to evaluate on (default data/nl2bash; a few rows of each for a dry
# run; ../shared/data/nl2bash/grouped_split for the grouped split, with its own train.jsonl as TRAIN_FILE). Retrieval
# augmentation (issue 34): NUM_NEIGHBORS=k gives both models the code of the k nearest training pairs (the same BM25
# retriever over TRAIN_FILE, leave-one-out in training) and DRAFT_PROBABILITY CodeFusion's share of training canvases
# started from the nearest neighbour's code (default 0); RETRIEVAL_MODE=dense gives both the dense MiniLM retriever's
# neighbours instead of BM25's. The floors are the first distinct commands of each retriever (TF-IDF, BM25, dense),
# each with its sign tests; STAGE=floors runs only those. PYTHON picks the interpreter (default python3). Two CPU
# cores: two jobs at a time, one thread each.
set -euo pipefail
python=${PYTHON:-python3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if (($# < 4)); then
  echo "full_budget.sh: give OUT_DIR MINUTES CODE_TOKENIZER TRAIN_FILE [NAME=\"FLAGS\" ...]" >&2
  exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd) minutes=$2 tokenizer=$3 train_file=$4 data=${DATA:-data/nl2bash}
neighbors=${NUM_NEIGHBORS:-0} drafts=${DRAFT_PROBABILITY:-0} mode=${RETRIEVAL_MODE:-bm25}
shift 4
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"

if [[ ${STAGE:-all} == all ]]; then
  decay=$("$python" -c "print(float('$minutes') / 4)")
  recipe='{"normalize_code_embeddings": true, "prediction_type": "sample", "self_condition": true,
    "unroll_probability": 0.5, "predict_length": true,
    "num_neighbors": '"$neighbors"', "draft_probability": '"$drafts"'}'
  "$python" examples/text_to_code/finetune.py examples/text_to_code/configs/quickstart.json \
    --tokenizer_name_or_path "$tokenizer" --output_dir "$out/cf" --train_file "$train_file" \
    --validation_file "$data/validation.jsonl" \
    --min_train_timestep 600 --max_train_minutes "$minutes" --lr_decay_minutes "$decay" --disable_tqdm True \
    --retrieval_mode "$mode" --freeze_encoder True \
    --generation_eval_samples 0 --save_steps 500 --config_overrides "$recipe" >"$out/cf.log" 2>&1 &
  PYTHON=$python DATA=$data TRAIN_FILE=$train_file NUM_NEIGHBORS=$neighbors RETRIEVAL_MODE=$mode \
    bash research/tune_autoregressive.sh "$out/ar" "$minutes" "$tokenizer" 1e-3 >"$out/ar.log" 2>&1 &
  wait
fi

codefusion() {  # NAME SPLIT [FLAGS]
  # shellcheck disable=SC2086
  "$python" -m codefusion_hf.cli evaluate "$out/cf" "$data/$2.jsonl" --commit-tokens --steps 10 -k 5 \
    --dtype bfloat16 ${3:-} --output-dir "$out/eval-$1" >"$out/eval-$1.log" 2>&1
}
compare() {  # BASELINE CANDIDATE OUTPUT
  "$python" research/compare_predictions.py --baseline "$out/$1/predictions.jsonl" \
    --candidate "$out/$2/predictions.jsonl" --language bash --ks 1 5 --output "$out/$3.json" >/dev/null
}

score() {  # EVALUATION: template match at top-1 plus top-5, the validation score that picks the test setting
  "$python" -c "import json, sys; m = json.load(open(sys.argv[1])); print(m['template_match@1'] + m['template_match@5'])" \
    "$out/eval-$1/metrics.json"
}

if [[ ${STAGE:-all} != floors ]]; then
rm -f "$out/validation.done"
(
  trap 'touch "$out/validation.done"' EXIT  # the test evaluation waits for this, also after a failure
  codefusion cf-validation validation
  for variant in "$@"; do
    codefusion "cf-validation-${variant%%=*}" validation "${variant#*=}"
    compare eval-cf-validation "eval-cf-validation-${variant%%=*}" "cf-${variant%%=*}_vs_cf-validation"
  done
) &
(
  "$python" -m research.baselines.train_autoregressive research/configs/nl2bash_autoregressive.json --do_train False \
    --model_name_or_path "$out/ar/lr1e-3" --output_dir "$out/ar/lr1e-3" --test_file "$data/test.jsonl" \
    --num_neighbors "$neighbors" \
    --eval_output_dir "$out/eval-ar-test" >"$out/eval-ar-test.log" 2>&1
  if [[ -z ${TEST_FLAGS+set} ]]; then  # the setting of the best validation score, the default on a tie
    until [[ -e $out/validation.done ]]; do sleep 10; done
    TEST_FLAGS="" best=$(score cf-validation)
    for variant in "$@"; do
      candidate=$(score "cf-validation-${variant%%=*}")
      if "$python" -c "import sys; sys.exit(not float(sys.argv[1]) > float(sys.argv[2]))" "$candidate" "$best"; then
        TEST_FLAGS=${variant#*=} best=$candidate
      fi
    done
  fi
  echo "test flags: ${TEST_FLAGS:-none}" >"$out/test_flags.txt"
  codefusion cf-test test "$TEST_FLAGS"
) &
wait
mkdir -p "$out/eval-ar-validation"
cp "$out/ar/eval-lr1e-3/"{metrics.json,predictions.jsonl} "$out/eval-ar-validation/"
fi
for split in validation test; do
  compare "eval-ar-$split" "eval-cf-$split" "cf_vs_ar-$split"
  for method in tfidf bm25 dense; do
    floor=retrieval-$split  # TF-IDF's folder keeps the name of the earlier runs
    [[ $method == tfidf ]] || floor=retrieval-$method-$split
    "$python" research/baselines/retrieval.py --method "$method" --train_file "$data/train.jsonl" \
      --test_file "$data/$split.jsonl" --output_dir "$out/eval-$floor" >"$out/eval-$floor.log" 2>&1
    compare "eval-$floor" "eval-cf-$split" "cf_vs_$floor"
    compare "eval-$floor" "eval-ar-$split" "ar_vs_$floor"
  done
done
echo "full_budget.sh: done; metrics in $out/eval-*/metrics.json, sign tests in $out/*_vs_*.json"
