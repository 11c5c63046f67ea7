#!/usr/bin/env bash
# Install pixal3d and what this machine can use into the current Python environment.
#   bash setup.sh            # CPU or CUDA, detected
# Optional GPU extras are opt-in because they compile for a long time:
#   PIXAL3D_FLASH_ATTN=1 bash setup.sh
# Re-running is cheap: what is already installed is kept.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
say() { printf '[setup] %s\n' "$*"; }

# 1. PyTorch. Keep an existing install (e.g. the CUDA build on a GPU machine); otherwise pick a build that fits.
if $PY -c "import torch" 2>/dev/null; then
    say "keeping installed torch $($PY -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    say "NVIDIA GPU found: installing the CUDA build of torch from PyPI"
    $PY -m pip install torch
else
    # A CPU wheel on a local find-links folder (as on our CI machines) avoids a multi-GB CUDA download.
    local_wheel=$(ls ${PIP_FIND_LINKS:-/nonexistent}/torch-*+cpu-*.whl 2>/dev/null | head -n 1 || true)
    if [ -n "$local_wheel" ]; then
        ver=$(basename "$local_wheel" | cut -d- -f2 | cut -d+ -f1)
        say "no GPU: installing the local CPU wheel torch==$ver"
        $PY -m pip install "torch==$ver"
    else
        say "no GPU: installing the CPU build of torch"
        $PY -m pip install torch --index-url https://download.pytorch.org/whl/cpu
    fi
fi

# 2. The package with its runtime and test dependencies (torch is not re-resolved: it is already present).
$PY -m pip install -e ".[test,app]"

# 2b. Blender as a Python module, for the data toolkit's condition renders (CPU Cycles). Its wheel pins numpy<2, which
#     it does not need for rendering, hence --no-deps. Wheels exist for CPython 3.11 on x86-64 (opt out: PIXAL3D_SKIP_BPY=1).
if [ "${PIXAL3D_SKIP_BPY:-0}" != "1" ] && ! $PY -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('bpy') is None)" 2>/dev/null; then
    if $PY -c "import sys,platform; sys.exit(0 if sys.version_info[:2]==(3,11) and platform.machine()=='x86_64' else 1)"; then
        say "installing bpy (Blender as a Python module, ~370 MB) for data_toolkit render_cond"
        $PY -m pip install --no-deps "bpy==4.5.15" "zstandard>=0.22" || say "skipped: bpy could not be installed; render_cond tests will be skipped"
    else
        say "skipped: bpy (needs CPython 3.11 on x86-64); render_cond tests will be skipped"
    fi
fi

# 3. The Khronos glTF validator (npm) used by the GLB export tests.
if [ -f package.json ]; then
    if command -v npm >/dev/null 2>&1; then
        if [ ! -d node_modules/gltf-validator ]; then say "installing gltf-validator (npm ci)"; npm ci --silent --no-audit --no-fund; fi
    else
        say "skipped: gltf-validator (npm not found); GLB validation tests will be skipped"
    fi
fi

# 3b. Web demo (app.py) and its browser tests: Gradio + Playwright from PyPI, Chromium from Debian.
#     Never `playwright install` (it downloads its own browser build); the tests drive the system chromium.
if ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        say "installing chromium (apt) for the web-demo browser tests"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
            || say "skipped: chromium could not be installed; the app's browser tests will be skipped"
    else
        say "skipped: chromium (needs apt-get as root); the app's browser tests will be skipped"
    fi
fi

# 4. GPU extras.
if $PY -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    if [ "${PIXAL3D_FLASH_ATTN:-0}" = "1" ]; then
        say "building flash-attn (this can take long)"
        $PY -m pip install flash-attn --no-build-isolation
    else
        say "skipped: flash-attn (set PIXAL3D_FLASH_ATTN=1 to build it); attention uses PyTorch SDPA"
    fi
    $PY -c "import triton" 2>/dev/null && say "triton found: GPU sparse-conv kernels enabled" || say "skipped: triton not installed"
else
    # Triton's interpreter runs the sparse-conv kernel tests on the CPU; --no-deps keeps the CPU torch build.
    if ! $PY -c "import triton" 2>/dev/null; then
        $PY -m pip install --no-deps "triton==3.6.0" || say "skipped: triton (its kernel tests will be skipped)"
    fi
    say "no CUDA device: flash-attn skipped; the models run on the pure-PyTorch path (Triton kernels are tested under its interpreter)"
fi
say "done"
