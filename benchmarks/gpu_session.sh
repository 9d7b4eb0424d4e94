#!/usr/bin/env bash
# One short GPU session (≤ 9 minutes on one H100/H200) that measures everything issue 8 asks for and
# writes it to $OUT:
#   (a) tests/test_gpu.py (CUDA-only tests: captured vs eager, no host sync, CEM on CUDA, ...);
#   (b) epoch times on the full CIFAR-10 training set: eager vs captured, λ 0 vs 16, fp32 and bf16,
#       and the decoder attack's epoch (benchmarks/bench_train.py);
#   (c) as much of benchmarks/paper_scale.sh (σ 0.05, λ 0 and 16, concurrently) as the time left allows.
# Needs, in the repository root: .gpu_data/cifar10_jpeg/ (a copy of the shared cifar10_jpeg folder) and
# .whl/ (wheels of packages the GPU image lacks; optional). Every step has a timeout, so a hang cannot
# eat the budget; logs are tee'd to $OUT. SMOKE=1 runs the same steps on the CPU with tiny settings.
set -uo pipefail
OUT=${OUT:-/tmp/out}
BUDGET_S=${BUDGET_S:-530}          # whole script; the device command limit is 600 s
SMOKE=${SMOKE:-0}
export PYTHONUNBUFFERED=1
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
mkdir -p "$OUT"
START=$SECONDS
left() { echo $((BUDGET_S - (SECONDS - START))); }
log() { echo "[$(date +%T) +$((SECONDS - START))s] $*" | tee -a "$OUT/summary.txt"; }
PY=python3
command -v $PY >/dev/null 2>&1 || PY=python

# 0. Packages the image lacks travel as wheels in .whl/ (see the lead's run command).
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
log "start; budget ${BUDGET_S}s; smoke=$SMOKE"
{ nvidia-smi 2>&1 || true; $PY -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"; } > "$OUT/env.txt" 2>&1
tail -1 "$OUT/env.txt" | tee -a "$OUT/summary.txt"

if [[ $SMOKE == 1 ]]; then
  DEVICE=cpu DATA=${DATA:-../shared/data}
  BENCH=(--device cpu --modes eager --precisions fp32 --limit_train 256 --epochs 1 --attack_epochs 1 --refresh_parts --refresh_batches 100,0 --profile_refresh 8
         --attack_decoder res_normN1C16)
  BENCH_BF16=()
  PAPER_EXTRA="--limit_train 256 --limit_test 100 --gan_AE_type res_normN1C16"
else
  DEVICE=cuda DATA=${DATA:-.gpu_data/cifar10_full}
  BENCH=(--device cuda --modes eager,captured --precisions fp32 --epochs 3 --attack_epochs 2 --refresh_parts --refresh_batches 512,0 --profile_refresh 15)
  BENCH_BF16=(--device cuda --modes captured --precisions bf16 --epochs 2 --attack_epochs 2)
  PAPER_EXTRA=""
fi

# Decoding the archive is CPU work: start it now, beside the GPU tests.
decode_pid=""
if ! compgen -G "$DATA/cifar10_subset/train_*.npz" >/dev/null; then
  ( timeout 240 $PY .gpu_data/cifar10_jpeg/unpack.py "$DATA" > "$OUT/decode.log" 2>&1 ) &
  decode_pid=$!
fi

# (a) CUDA tests.
if [[ $SMOKE == 1 ]]; then
  timeout 300 $PY -m pytest -q -x tests/test_capture.py 2>&1 | tee "$OUT/tests.log" | tail -3
else
  timeout 240 $PY -m pytest -q -rs tests/test_gpu.py 2>&1 | tee "$OUT/tests.log" | tail -15
fi
log "tests: $(grep -E 'passed|failed|error' "$OUT/tests.log" | tail -1)"

if [[ -n $decode_pid ]]; then wait "$decode_pid"; log "decode: $(tail -2 "$OUT/decode.log" | tr '\n' ' ')"; fi
compgen -G "$DATA/cifar10_subset/train_*.npz" >/dev/null || { log "no decoded data in $DATA; stopping"; exit 1; }

# (b) Epoch times: eager vs captured, λ 0 vs 16 (fp32), the attack; then captured bf16.
timeout $(( $(left) < 240 ? $(left) : 240 )) $PY benchmarks/bench_train.py --data_root "$DATA" "${BENCH[@]}" \
  --json "$OUT/bench_fp32.json" 2>&1 | tee "$OUT/bench_fp32.log"
log "bench fp32 done"
if [[ ${#BENCH_BF16[@]} -gt 0 && $(left) -gt 260 ]]; then
  timeout 100 $PY benchmarks/bench_train.py --data_root "$DATA" "${BENCH_BF16[@]}" --json "$OUT/bench_bf16.json" \
    2>&1 | tee "$OUT/bench_bf16.log"
  log "bench bf16 done"
fi

# (c) paper_scale.sh, sized to the time left from the measured captured λ=16 epoch (two runs share
# the GPU, so each is assumed 1.6x slower), with a 10-epoch attack.
T16=$($PY - "$OUT/bench_fp32.json" <<'PY' 2>/dev/null
import json, sys
r = json.load(open(sys.argv[1]))["train"]
best = [x for x in r if x["lambda"] > 0 and x["mode"] == "captured" and not x["capture_failed"]] or \
       [x for x in r if x["lambda"] > 0]
print(f"{best[0]['epoch_median_s']:.3f}")
PY
)
T16=${T16:-3.0}
ATT=10
[[ $SMOKE == 1 ]] && ATT=1
REMAIN=$(( $(left) - 25 ))
EPOCHS=$($PY -c "print(max(2, min(240, int(($REMAIN - 70) / (1.6 * $T16 + 0.15)))))")
[[ $SMOKE == 1 ]] && EPOCHS=2
log "paper_scale: captured λ16 epoch ${T16}s, ${REMAIN}s left -> --epochs $EPOCHS --attack_epochs $ATT"
if [[ $REMAIN -gt 60 ]]; then
  timeout --signal=INT --kill-after=10 $REMAIN bash benchmarks/paper_scale.sh --data "$DATA" --epochs "$EPOCHS" \
    --attack_epochs $ATT --folder "$OUT/paper_scale" --device $DEVICE --python $PY --extra "$PAPER_EXTRA" 2>&1 \
    | tee "$OUT/paper_scale.log"
  # Keep logs and metrics, drop the checkpoints (tens of MB each).
  find "$OUT/paper_scale" -name '*.pt' -delete 2>/dev/null
fi
log "end; $(left)s of the budget left"
