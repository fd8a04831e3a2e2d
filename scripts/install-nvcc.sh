#!/usr/bin/env bash
# Installs nvcc 13.0 from NVIDIA's PyPI wheels into a local venv (.venv-nvcc, gitignored), so a machine
# without a CUDA toolkit can compile kernels/*.cu (sm_90 code and PTX) at build time. The wheels are
# pinned to 13.0.x: newer ones emit PTX that the 13.0 driver on the GPU machine cannot load.
#
# Usage: scripts/install-nvcc.sh            (then export the PATH line it prints)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-nvcc"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 \
    nvidia-cuda-crt==13.0.88 \
    nvidia-nvvm==13.0.88 \
    nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-runtime==13.0.96

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
bin="$site/nvidia/cu13/bin"
if [ ! -x "$bin/nvcc" ]; then
    echo "error: nvcc not found at $bin/nvcc after installing the wheels" >&2
    exit 1
fi
"$bin/nvcc" --version | tail -n 2 >&2
echo "# nvcc installed; to use it in this shell (build.rs also honours NVCC=<path to nvcc>):" >&2
echo "export PATH=\"$bin:\$PATH\""
