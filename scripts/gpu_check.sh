#!/usr/bin/env bash
# Paper parity on one GPU (issue 7): the IEMOCAP and MELD parity models (jobs/recipes/iemocap.yaml,
# jobs/recipes/meld.yaml, D=1024) on synthetic features of the real datasets' sizes, 3 training epochs
# and one inference pass each, ours (fused attention, bf16 autocast) beside the same
# computation written naively (fp32, unfused math attention). No Ray needed. Figures land in
# $OUT (default gpu-out/): parity.json and the GPU's name. About 2-4 minutes on an H100.
set -u
source "$(dirname "$0")/gpu_env.sh"
timeout 480 python3 -m benchmarks.bench_parity --device cuda --epochs 3 --output "$OUT/parity.json" 2>&1 | tail -80
