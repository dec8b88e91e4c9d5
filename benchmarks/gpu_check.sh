#!/usr/bin/env bash
# The GPU checks and benchmarks, in one short run on a CUDA machine (about 6 minutes on an H200, each step capped).
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# Writes every table to $OUT: doctor.json; pipeline_cuda.md (issue 14: 20,000 chips, decode-only on the same
# workers, dinov2-base, clip-vit-b-32 + dinov2-base + siglip-base in one command and separately, forward-only
# rates); arcface_cuda.json (ArcFace detect mode: which providers the recogniser and the workers' detector ran
# on); probe_cuda.md (the L-BFGS LinearSweep on 434,528 x 768, 500 classes); extract_cuda.md (build_store vs the naive
# loop); supcon_cuda.md (SupCon head throughput); and log.txt. Each step has its own time limit so that one slow
# step cannot eat the others' time. Copy the pipeline figures into docs/benchmarks.md, row
# "dinov2-base build vs decode floor (H200)", with the date, machine and command.
set -u
OUT=${OUT:-/tmp/facestore-gpu}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
PY=${PY:-python3}
CORES=$($PY -c "from facestore.build import usable_cores; print(usable_cores())")
WORKERS=$((CORES > 1 ? CORES - 1 : 1))
exec > >(tee -a "$OUT/log.txt") 2>&1
date -u
nvidia-smi -L
echo "usable cores $CORES, decode workers $WORKERS"
$PY -m facestore doctor --json > "$OUT/doctor.json" || echo "doctor failed"
echo "== issue 14: pipeline stages vs the decode floor, 20,000 chips, random real-size weights, bf16"
timeout 300 $PY benchmarks/pipeline.py --images 20000 --workers "$WORKERS" --device cuda --real-size \
    --batch-size 256 --out "$OUT/pipeline_cuda.md" || echo "pipeline benchmark failed or timed out"
echo "== ArcFace detect mode on CUDA: recogniser and detector providers, decode workers spawned"
timeout 120 $PY - > "$OUT/arcface_cuda.json" <<'EOF' || echo "arcface check failed or timed out"
import json, tempfile
from pathlib import Path
from facestore.build import build_store
from tests.conftest import write_chips
from tests.tiny import make_weights
tmp = Path(tempfile.mkdtemp())
write_chips(tmp / "chips", {"A": {"p": 8}, "B": {"q": 8}}, size=512, seed=1)
w = make_weights("arcface-r50", tmp / "w")
try:
    r = build_store(tmp / "chips", tmp / "s", "arcface-r50", weights=w, device="auto", workers=2, progress=False)
    print(json.dumps({"runtime": r.models[0].runtime, "pipeline": r.pipeline, "failures": r.models[0].failures},
                     indent=2))
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
EOF
cat "$OUT/arcface_cuda.json"
echo "== LinearSweep (L-BFGS lambda path), 434,528 x 768, 500 classes, CUDA (target < 60 s)"
timeout 90 $PY benchmarks/probe.py --device cuda --n 434528 --skip-sklearn --out "$OUT/probe_cuda.md"
echo "== build_store on CUDA vs the plan's naive loop (512x512 JPEG chips)"
timeout 150 $PY benchmarks/extract.py --device cuda --images 1000 --family-images 256 --batch-size 128 \
    --workers "$WORKERS" && cp benchmarks/results/extract.md "$OUT/extract_cuda.md"
echo "== SupCon head throughput, CUDA"
timeout 30 $PY benchmarks/supcon.py --device cuda && cp benchmarks/results/supcon.md "$OUT/supcon_cuda.md"
echo "== done"
date -u
