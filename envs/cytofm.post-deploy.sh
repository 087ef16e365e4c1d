#!/usr/bin/env bash
# Install the cytofm package (from this checkout) into the freshly created rule environment.
set -euo pipefail
python -m pip install --no-deps -e "${CYTOFM_SRC:-.}"
