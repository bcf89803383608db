#!/usr/bin/env bash
# Installs the Python packages the tests use into DIR, once: the official `openai` package (the
# API tests) and llama.cpp's `gguf` package with numpy (the reference dequantization).
# Usage: scripts/pydeps.sh DIR
set -euo pipefail
dir=$1
openai=3.57.0
gguf=0.19.0
python=${AIT_PYTHON:-python3}
check="import sys, openai, gguf; from importlib.metadata import version
sys.exit(openai.__version__ != '$openai' or version('gguf') != '$gguf')"
if PYTHONPATH="$dir" "$python" -c "$check" 2>/dev/null; then
    echo "openai $openai and gguf $gguf already in $dir"
    exit 0
fi
"$python" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --upgrade --target "$dir" \
    "openai==$openai" "gguf==$gguf"
PYTHONPATH="$dir" "$python" -c "$check"
echo "installed openai $openai and gguf $gguf in $dir"
