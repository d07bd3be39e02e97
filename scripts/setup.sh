#!/usr/bin/env bash
# Create .venv with magma-data installed (editable) on a machine that has only Python 3.11.
#   scripts/setup.sh            the tool and its demo
#   scripts/setup.sh --cluster  also what a Ray cluster's nodes need (ray[default]: the job server)
#   scripts/setup.sh --test     also the test tools, the Open-X extra (TensorFlow), the train extra
#                               (magma-train: transformers, safetensors, tokenizers), the curate extra
#                               (shot boundaries and CLIP alignment: scenedetect, transformers) and the
#                               cluster extra, as CI uses
# Every pip call takes constraints.txt: any spec that admits a newer torch would pull several GB
# of CUDA packages onto a CPU machine. Re-running is quick: nothing is reinstalled unless
# pyproject.toml, constraints.txt or the chosen extras changed.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="."
[[ "${1:-}" == "--cluster" ]] && extras=".[cluster]"
[[ "${1:-}" == "--test" ]] && extras=".[test,oxe,train,curate,cluster]"

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null; then python="$candidate"; break; fi
  done
fi
[[ -n "$python" ]] || { echo "setup: no python3 found; install Python 3.11" >&2; exit 1; }

[[ -x .venv/bin/python ]] || "$python" -m venv .venv
stamp=".venv/.magma-data-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16) $extras"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  .venv/bin/python -m pip install --quiet -c constraints.txt torch==2.13.0
  .venv/bin/python -m pip install --quiet -c constraints.txt -e "$extras"
  echo "$want" > "$stamp"
fi
