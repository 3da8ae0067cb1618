#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for seat-tf, idempotently:
#   - the real Fashion-MNIST files (Debian's dataset-fashion-mnist package),
#   - python3-venv if `python3 -m venv` is unavailable (Debian/Ubuntu ship python3 without it),
#   - a virtualenv .venv with seat-tf installed in editable mode, with tensorflow[and-cuda]
#     if an NVIDIA GPU is visible, tensorflow-cpu otherwise, and the dev tools; reinstalled
#     whenever setup.cfg or pyproject.toml changed since the last install.
# Usage: bash scripts/setup.sh        (from any directory)
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=""
if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $sudo_cmd apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$@" >/dev/null
}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "[setup] installing dataset-fashion-mnist (Debian package)"
  apt_install dataset-fashion-mnist
fi

if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" >/dev/null 2>&1; then
    py_version=$(python3 -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')
    echo "[setup] installing python3-venv (python3 -m venv is not available)"
    apt_install python3-venv || apt_install "python${py_version}-venv"
  fi
  echo "[setup] creating .venv"
  python3 -m venv .venv
fi
flavour=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=gpu; fi
# The install is redone when the declared dependencies change (a new extra, a new pin), not
# only when the package is missing.
wanted_hash="$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1) $flavour"
hash_file=.venv/.seat_tf_install_hash
installed_hash="$(cat "$hash_file" 2>/dev/null || true)"
if [ "$installed_hash" != "$wanted_hash" ] || ! .venv/bin/python -c "import seat_tf, pytest" >/dev/null 2>&1; then
  echo "[setup] installing seat-tf[$flavour,dev] into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[$flavour,dev]"
  echo "$wanted_hash" > "$hash_file"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import tensorflow as tf, keras; print("tensorflow", tf.__version__, "keras", keras.__version__)' 2>/dev/null)"
