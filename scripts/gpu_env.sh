# Sourced by the GPU scripts: OUT (default gpu-out/) made, the checkout on PYTHONPATH, and the
# GPU's name, memory and driver and torch's version in $OUT/gpu.txt.
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
