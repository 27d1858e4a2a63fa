#!/usr/bin/env bash
# Does trimming the training canvas change what CodeFusion learns? research/lever_ab.sh with arm "full" on the whole
# 64-position canvas (batches drawn at random) and arm "trim" with --canvas_margin MARGIN and
# --train_sampling_strategy group_by_length, from scratch, evaluated on NL2Bash validation and compared prompt by
# prompt (template match).
#
#   bash research/canvas_trim_ab.sh OUTPUT_DIR [MINUTES] [MARGIN] [EVAL_SAMPLES]
#
# MINUTES of training per arm (default 15), MARGIN pad positions past the batch's longest code (default 4),
# EVAL_SAMPLES validation prompts (default all 1,008). A margin of the whole canvas (64) trains on all of it.
set -euo pipefail
out=$1 minutes=${2:-15} margin=${3:-4}
EVAL_SAMPLES=${4:-} exec bash "$(dirname "${BASH_SOURCE[0]}")/lever_ab.sh" "$out" "$minutes" \
  full="--canvas_margin 64 --train_sampling_strategy random" \
  trim="--canvas_margin $margin --train_sampling_strategy group_by_length"
