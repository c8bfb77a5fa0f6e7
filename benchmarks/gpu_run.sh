#!/usr/bin/env bash
# Issue 6's GPU measurements in ONE command: the PyTorch reference, then mmrl's step, back to back
# on the same GPU, into one JSON-lines file, then the markdown tables (benchmarks/report.py).
#
#   bash benchmarks/gpu_run.sh [ratio|extended|all] [RESULTS_DIR]
#
#   ratio     (default) torch_reference.py (ConVIRT + LoVT, eager and torch.compile) and step.py
#             (ConVIRT + LoVT, ResNet-50, BERT-base, 224², 128 tokens) at $BATCHES (64,128,256):
#             the >= 1.5x target.
#   extended  step.py for ConVIRT, LoVT, GLoRIA, PLACE x ResNet-50 / ViT-B/16 at 512 with
#             --time_local_loss (the <= 25 % local-loss target), and ConVIRT at 256 with
#             --with_input_pipeline (the >= 0.9 target; needs grain + pydicom, else 'skipped').
#   all       both.
# RESULTS_DIR defaults to $OUT (the device tool's output folder) or /tmp/mmrl_bench.
#
# The GPU image lacks ml_collections (and grain, pydicom). Carry wheels in .whl/ (ignored by git):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       ml_collections==1.1.0        # pure Python; + grain, pydicom and their deps for 'extended'
# and pass carry=[".whl"]; this script installs them into /tmp/site when .whl/ exists.
# Levers: XLA_FLAGS defaults to the latency-hiding scheduler; the JAX persistent compilation cache
# and the inductor cache live under RESULTS_DIR/../ caches (set JAX_CACHE / TORCHINDUCTOR_CACHE_DIR
# to reuse them between runs on one machine).
set -euo pipefail
PART="${1:-ratio}"
RESULTS="${2:-${OUT:-/tmp/mmrl_bench}}"
BATCHES="${BATCHES:-64,128,256}"
STEPS="${STEPS:-20}"
cd "$(dirname "$0")/.."
mkdir -p "$RESULTS"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  echo "ml_collections is not installed: carry its wheel in .whl/ (see the header of $0)" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_enable_latency_hiding_scheduler=true}"
export JAX_CACHE="${JAX_CACHE:-/tmp/mmrl_jax_cache}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/mmrl_inductor_cache}"
JSON="$RESULTS/results-$(date -u +%Y%m%d-%H%M%S).jsonl"
{ nvidia-smi -L || true; "$PY" -c "import jax, torch; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__)"; } >&2

if [[ "$PART" == "ratio" || "$PART" == "all" ]]; then
  "$PY" benchmarks/torch_reference.py --device=cuda --methods=convirt,lovt \
      --batch_sizes="$BATCHES" --steps="$STEPS" --compile --json_out="$JSON"
  "$PY" benchmarks/step.py --methods=convirt,lovt --image_towers=resnet50 \
      --batch_sizes="$BATCHES" --steps="$STEPS" --compilation_cache_dir="$JAX_CACHE" \
      --json_out="$JSON"
fi
if [[ "$PART" == "extended" || "$PART" == "all" ]]; then
  "$PY" benchmarks/step.py --methods=convirt,lovt,gloria,place --image_towers=resnet50,vit_b16 \
      --batch_sizes=512 --steps="$STEPS" --time_local_loss --compilation_cache_dir="$JAX_CACHE" \
      --json_out="$JSON"
  "$PY" benchmarks/step.py --methods=convirt --image_towers=resnet50 --batch_sizes=256 \
      --steps="$STEPS" --with_input_pipeline --compilation_cache_dir="$JAX_CACHE" \
      --json_out="$JSON"
fi
"$PY" benchmarks/report.py "$JSON" | tee "$RESULTS/report.md"
echo "results: $JSON and $RESULTS/report.md" >&2
