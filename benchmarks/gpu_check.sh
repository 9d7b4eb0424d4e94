#!/usr/bin/env bash
# One short GPU session: the test suite (GPU tests included) and the CEM cost benchmark at full
# CIFAR-10 scale (the 4,000-image subset tiled 12x = 48,000 images/epoch).
# Expects the CIFAR-10 subset under $CEM_DATA_ROOT and, where pytorch-msssim is missing, its wheel in .whl/.
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export CEM_DATA_ROOT="${CEM_DATA_ROOT:-../shared/data}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"
python3 -m pytest -q -p no:cacheprovider ${GPU_TESTS:-tests} 2>&1 | tail -n 6
for classes in 10 100; do
  python3 benchmarks/bench_train.py --data_root "$CEM_DATA_ROOT" --repeat 12 --classes $classes --epochs 3 --device cuda
done
