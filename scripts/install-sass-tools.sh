#!/usr/bin/env bash
# Installs cuobjdump and nvdisasm from NVIDIA's PyPI wheels into a local venv (.venv-sass, gitignored)
# for scripts/sass-costs.py, which reads the kernels' sm_90 code. Pinned like nvcc
# (scripts/install-nvcc.sh); they only read code, so they need not match nvcc's 13.0.
#
# Usage: scripts/install-sass-tools.sh      (then export the PATH line it prints)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-sass"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    nvidia-cuda-cuobjdump==13.2.86 \
    nvidia-cuda-nvdisasm==13.2.86

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
bin="$site/nvidia/cu13/bin"
if [ ! -x "$bin/cuobjdump" ]; then
    echo "error: cuobjdump not found at $bin/cuobjdump after installing the wheels" >&2
    exit 1
fi
"$bin/cuobjdump" --version | tail -n 2 >&2
echo "# cuobjdump installed; to use it in this shell (scripts/sass-costs.py also looks in .venv-sass):" >&2
echo "export PATH=\"$bin:\$PATH\""
