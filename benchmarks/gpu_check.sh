#!/usr/bin/env bash
# The GPU checks and benchmarks, in one short run on a CUDA machine (about 3 minutes on an H200).
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# Writes every table to $OUT: doctor.json, probe_cuda.md (LinearSweep on 434,528 x 768,
# 500 classes), extract_cuda.md (build_store vs the naive loop on 512x512 JPEG chips),
# supcon_cuda.md (SupCon head throughput), and log.txt. Each step has its own time limit so that
# one slow step cannot eat the others' time.
set -u
OUT=${OUT:-/tmp/facestore-gpu}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
PY=${PY:-python3}
exec > >(tee -a "$OUT/log.txt") 2>&1
nvidia-smi -L
$PY -m facestore doctor --json > "$OUT/doctor.json" || echo "doctor failed"
echo "== LinearSweep, 434,528 x 768, 500 classes, 8 weight decays, CUDA (target < 60 s)"
timeout 90 $PY benchmarks/probe.py --device cuda --n 434528 --skip-sklearn --out "$OUT/probe_cuda.md"
echo "== build_store on CUDA vs the plan's naive loop (512x512 JPEG chips)"
timeout 150 $PY benchmarks/extract.py --device cuda --images 1000 --family-images 256 --batch-size 128 --workers 14 \
    && cp benchmarks/results/extract.md "$OUT/extract_cuda.md"
echo "== SupCon head throughput, CUDA"
timeout 30 $PY benchmarks/supcon.py --device cuda && cp benchmarks/results/supcon.md "$OUT/supcon_cuda.md"
echo "== done"
