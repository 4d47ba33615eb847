#!/usr/bin/env bash
# One short session on a lent GPU machine (torch with CUDA, no Ray there): the GPU tests,
# the model on CUDA (bench --no-ray), and the scoring stage against the bare forward pass
# on 100k synthetic utterances at MELD dims. Figures land in $OUT (default gpu-out/).
set -u
source "$(dirname "$0")/gpu_env.sh"
python3 -c "import pyarrow; print('pyarrow', pyarrow.__version__)" | tee -a "$OUT/gpu.txt"
python3 -c "import ray; print('ray', ray.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu tests/unit/test_scoring.py tests/unit/test_model.py 2>&1 | tail -4 | tee "$OUT/pytest.txt"
timeout 240 python3 -m benchmarks.bench_scoring --device cuda --utterances 100000 --batch-sizes 16,64,256 \
    --output "$OUT/scoring_cuda.json" 2>&1 | grep -v Warning | tail -60
timeout 150 python3 -m benchmarks.bench --device cuda --no-ray --no-encoder --quick --output "$OUT/bench" 2>&1 | tail -45
