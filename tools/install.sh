#!/usr/bin/env bash
# Create .venv in the repo root and install the pinned OpenMMLab stack and
# rdprune_mm into it. Idempotent: a second run returns at once unless the
# requirements changed. mmcv 2.1.0 is built from source with its CPU ops the
# first time (about 20 minutes on 2 cores); pip caches the wheel after that.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp=$venv/.rdprune_mm-installed
want=$(cat requirements/*.txt setup.py tools/install.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check
     -c requirements/constraints.txt)

echo "[install] torch (CPU), build tools"
"${pip[@]}" torch "setuptools<81" wheel ninja numpy
echo "[install] mmengine, then mmcv 2.1.0 with its CPU ops (built once)"
"${pip[@]}" mmengine
MMCV_WITH_OPS=1 FORCE_CUDA=0 "${pip[@]}" --no-build-isolation mmcv
echo "[install] mmdet, spconv, mmdet3d and their requirements"
"${pip[@]}" -r requirements/runtime.txt
"${pip[@]}" --no-deps mmdet3d nuscenes-devkit lyft-dataset-sdk
echo "[install] rdprune_mm and the test requirements"
"${pip[@]}" --no-deps -e .
"${pip[@]}" -r requirements/tests.txt
"$venv/bin/python" -c "import rdprune_mm, mmdet3d, spconv, torch; \
print('[install] ok: torch', torch.__version__, 'mmdet3d', mmdet3d.__version__)"
echo "$want" > "$stamp"
