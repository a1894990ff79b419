#!/usr/bin/env bash
# The test command (README): every test, against real PostgreSQL, Redis, vLLM and Prometheus.
set -euo pipefail
cd "$(dirname "$0")/.."
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
exec .venv/bin/python -m pytest "$@"
