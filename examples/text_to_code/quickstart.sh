#!/usr/bin/env bash
# Quickstart: train a small CodeFusion model on NL2Bash (the copy in data/nl2bash) for 11 minutes on 2 CPU
# cores, save it as a pipeline in runs/quickstart, evaluate it on 200 validation prompts and print top-3 candidates.
# Run after the README's install command, from anywhere:  bash examples/text_to_code/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" examples/text_to_code/train_tokenizer.py --train_files data/nl2bash/train.jsonl --vocab_size 8000 \
  --output_dir runs/quickstart/tokenizer
"$PYTHON" examples/text_to_code/finetune.py examples/text_to_code/configs/quickstart.json
# `codefusion generate`, run by the same interpreter.
"$PYTHON" -m codefusion_hf.cli generate runs/quickstart --commit-tokens --steps 10 -k 3 \
  "list all files in the current directory, including hidden ones" \
  "count the lines of every .py file under the current directory" \
  "find files larger than 10 megabytes in /var/log"
