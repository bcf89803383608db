#!/usr/bin/env bash
# Installs the official `openai` Python package (for the API tests) into DIR, once.
# Usage: scripts/pydeps.sh DIR
set -euo pipefail
dir=$1
version=3.57.0
python=${AIT_PYTHON:-python3}
if PYTHONPATH="$dir" "$python" -c "import openai, sys; sys.exit(openai.__version__ != '$version')" 2>/dev/null; then
    echo "openai $version already in $dir"
    exit 0
fi
"$python" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --upgrade --target "$dir" "openai==$version"
PYTHONPATH="$dir" "$python" -c "import openai; print('installed openai', openai.__version__, 'in $dir')"
