#!/usr/bin/env bash
# The paper's CIFAR-10 setting at full scale on one GPU: decode the whole training set from the JPEG
# archive, train and attack σ=0.05 with λ=0 and λ=16 (vgg11_bn_sgm, cut 4, noRELU_C8S1, 50,000 training
# images, model selected on the test set as the paper code does), then print accuracy, attack
# MSE/SSIM/PSNR, wall times and the CEM gain. Run `bash benchmarks/paper_scale.sh --help`.
set -uo pipefail

JPEG_DIR=${JPEG_DIR:-.gpu_data/cifar10_jpeg}     # holds cifar10_train50000_test1000_jpeg.tar.gz + unpack.py
DATA=${DATA:-.gpu_data/cifar10_full}             # decoded arrays go to $DATA/cifar10_subset/
EPOCHS=${EPOCHS:-240}
ATTACK_EPOCHS=${ATTACK_EPOCHS:-50}
SIGMA=${SIGMA:-0.05}
LAMBDAS=${LAMBDAS:-"0 16"}
FOLDER=${FOLDER:-runs/paper_scale}
PARALLEL=${PARALLEL:-1}                          # λ runs at the same time (one small run leaves the GPU idle)
DEVICE=${DEVICE:-auto}
PYTHON=${PYTHON:-python}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3   # some images have only python3
EXTRA=${EXTRA:-}

usage() {
  cat <<'TXT'
Usage: bash benchmarks/paper_scale.sh [options]     (each option also settable by its variable)
  --jpeg_dir DIR     folder with the CIFAR-10 JPEG archive and unpack.py [JPEG_DIR] (.gpu_data/cifar10_jpeg;
                     falls back to ../shared/data/cifar10_jpeg when that exists)
  --data DIR         where the decoded arrays go / are found [DATA]       (.gpu_data/cifar10_full)
  --epochs N         training epochs; lr milestones 60/120/180/210 scale with N [EPOCHS] (240)
  --attack_epochs N  decoder-attack epochs [ATTACK_EPOCHS]                 (50)
  --sigma S          noise σ [SIGMA]                                       (0.05)
  --lambdas "0 16"   CEM weights [LAMBDAS]                                 ("0 16")
  --folder DIR       results folder [FOLDER]                               (runs/paper_scale)
  --parallel 0|1     run the λ values at the same time [PARALLEL]          (1)
  --device D         [DEVICE] (auto)     --python P  [PYTHON] (python)
  --extra "FLAGS"    more main_MIA.py flags [EXTRA], e.g. "--bf16" or "--capture off"
A finished run is not redone (delete its folder or pass --extra --force); a killed one is resumed.
TXT
}

die() { echo "paper_scale.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  [[ $1 == -h || $1 == --help ]] && { usage; exit 0; }
  [[ $# -ge 2 ]] || die "option $1 needs a value (see --help)"
  case $1 in
    --jpeg_dir) JPEG_DIR=$2 ;; --data) DATA=$2 ;; --epochs) EPOCHS=$2 ;; --attack_epochs) ATTACK_EPOCHS=$2 ;;
    --sigma) SIGMA=$2 ;; --lambdas) LAMBDAS=$2 ;; --folder) FOLDER=$2 ;; --parallel) PARALLEL=$2 ;;
    --device) DEVICE=$2 ;; --python) PYTHON=$2 ;; --extra) EXTRA=$2 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift 2
done
[[ $EPOCHS =~ ^[0-9]+$ && $EPOCHS -ge 1 ]] || die "--epochs must be a whole number >= 1"
[[ $ATTACK_EPOCHS =~ ^[0-9]+$ && $ATTACK_EPOCHS -ge 1 ]] || die "--attack_epochs must be a whole number >= 1"
cd "$(dirname "${BASH_SOURCE[0]}")/.." || die "cannot enter the repository folder"

# 1. The data: decode once (about 30 s); later calls find the arrays.
if ! compgen -G "$DATA/cifar10_subset/train_*.npz" >/dev/null; then
  [[ -f $JPEG_DIR/unpack.py || ! -f ../shared/data/cifar10_jpeg/unpack.py ]] || JPEG_DIR=../shared/data/cifar10_jpeg
  [[ -f $JPEG_DIR/unpack.py ]] || die "no $JPEG_DIR/unpack.py: copy the shared cifar10_jpeg folder (archive + unpack.py) there or pass --jpeg_dir"
  echo "decoding the CIFAR-10 JPEG archive in $JPEG_DIR into $DATA ..."
  t0=$SECONDS
  "$PYTHON" "$JPEG_DIR/unpack.py" "$DATA" || die "decoding failed"
  echo "decoded in $((SECONDS - t0)) s"
fi

# 2. Train + attack each λ (train_time attack: the attacker holds the training images).
mkdir -p "$FOLDER" || die "cannot create $FOLDER"
pids=()
names=()
for l in $LAMBDAS; do
  fn="cifar10full_sigma${SIGMA}_lambd${l}_ep${EPOCHS}_att${ATTACK_EPOCHS}"
  # shellcheck disable=SC2206  # EXTRA is a flag string meant to be split into words
  cmd=("$PYTHON" main_MIA.py --dataset cifar10 --data_root "$DATA" --select_on test --arch vgg11_bn_sgm
       --cutlayer 4 --bottleneck_option noRELU_C8S1 --regularization Gaussian_kl --regularization_strength "$SIGMA"
       --lambd "$l" --var_threshold 0.125 --log_entropy 1 --num_epochs "$EPOCHS" --learning_rate 0.05
       --milestones paper --attack_epochs "$ATTACK_EPOCHS" --attack_modes train_time --device "$DEVICE"
       --folder "$FOLDER" --filename "$fn" --no_progress $EXTRA)
  [[ -f $FOLDER/$fn/checkpoints/last.pt ]] && ! grep -q '"status": "finished"' "$FOLDER/$fn/metrics.json" 2>/dev/null \
    && cmd+=(--resume)
  echo "=== $(date '+%F %T') λ=$l: ${cmd[*]}"
  if [[ $PARALLEL == 1 ]]; then
    ( t0=$SECONDS; "${cmd[@]}" > "$FOLDER/$fn.log" 2>&1; rc=$?
      echo "λ=$l finished with exit status $rc after $((SECONDS - t0)) s (log: $FOLDER/$fn.log)"; exit $rc ) &
    pids+=($!)
  else
    t0=$SECONDS
    "${cmd[@]}" 2>&1 | tee "$FOLDER/$fn.log"
    echo "λ=$l finished with exit status ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
  fi
  names+=("$fn")
done
trap 'kill "${pids[@]}" 2>/dev/null; exit 130' INT TERM
fail=0
for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" || fail=1; done

# 3. The table and the gain (wall times: the lines above and each run's metrics.json).
echo
"$PYTHON" -m tools.report "$FOLDER" --mode train_time || fail=1   # the table and the CEM-gain table
exit $fail
