#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for seat-tf, idempotently:
#   - the real Fashion-MNIST files (Debian's dataset-fashion-mnist package),
#   - a virtualenv .venv with seat-tf installed in editable mode, with tensorflow[and-cuda]
#     if an NVIDIA GPU is visible, tensorflow-cpu otherwise, and the dev tools.
# Usage: bash scripts/setup.sh        (from any directory)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  echo "[setup] installing dataset-fashion-mnist (Debian package)"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
flavour=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=gpu; fi
if ! .venv/bin/python -c "import seat_tf, pytest" >/dev/null 2>&1; then
  echo "[setup] installing seat-tf[$flavour,dev] into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[$flavour,dev]"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import tensorflow as tf, keras; print("tensorflow", tf.__version__, "keras", keras.__version__)' 2>/dev/null)"
