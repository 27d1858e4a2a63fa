#!/usr/bin/env bash
# Quickstart: train a small CodeFusion model on NL2Bash (the copy in data/nl2bash) for 11 minutes on 2 CPU
# cores, save it as a pipeline in runs/quickstart, evaluate it on 200 validation prompts and print top-3 candidates.
# Run from the repository root after the README's install command:  bash examples/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" examples/train_tokenizer.py --train_files data/nl2bash/train.jsonl --vocab_size 8000 --output_dir runs/quickstart/tokenizer
"$PYTHON" examples/finetune.py examples/configs/quickstart.json
"$PYTHON" examples/generate.py --model runs/quickstart -k 3 --commit_tokens --steps 10 \
  "list all files in the current directory, including hidden ones" \
  "count the lines of every .py file under the current directory" \
  "find files larger than 10 megabytes in /var/log"
