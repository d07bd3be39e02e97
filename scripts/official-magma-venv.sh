#!/usr/bin/env bash
# A venv in which Magma's released model code (microsoft/Magma at e373780) imports and runs on a CPU,
# for the side-by-side benchmarks (benchmarks/magma_parity.py, benchmarks/magma_data_parity.py).
# Never install this into the project's .venv; docs/environment.md says why each pin is what it is.
#   scripts/official-magma-venv.sh DIR        -> DIR/bin/python
set -euo pipefail
dir=${1:?usage: scripts/official-magma-venv.sh DIR}
python3 -m venv "$dir"
"$dir/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 timm==0.9.12 open_clip_torch==2.29.0 \
  transformers==4.48.2 tokenizers==0.21.4 huggingface_hub==0.36.2 safetensors==0.8.0 numpy==2.4.6 pillow==13.0.0
"$dir/bin/python" -c "import torch, torchvision, open_clip, transformers; print('official Magma venv ready:', transformers.__version__)"
