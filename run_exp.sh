#!/usr/bin/env bash
# The paper sweep: datasets × cut layers × σ × seeds × λ, one main_MIA.py run (training + decoder attack)
# per configuration, then a results table (python -m tools.report). Run `bash run_exp.sh --help`.
set -uo pipefail
set -f  # sweep lists and --extra are split into words; never glob-expand them

# --quick: CEM against no CEM at one noise level, about 4¼ minutes on 2 idle CPU cores (README).
# Small data means few SGD steps per epoch, so batch 32 (4x the steps of the paper's 128 for the same
# compute) with the lr scaled alike (0.05 * 32/128 = 0.0125), constant until 70% of the run, then x0.2
# at 70% and 90%. CEM's step is coupled to the lr (lambda_eff = lambda*0.001/lr), so lambda_eff rises
# 1.28 -> 6.4 -> 32 and CEM's own step size lambda*0.001 stays the paper's.
QUICK_SIGMAS="0.05"
QUICK_LAMBDAS="0 16"
QUICK_LR=0.0125
QUICK_EPOCHS=10
QUICK_ATTACK_EPOCHS=8
QUICK_LIMIT_TRAIN=3000
QUICK_LIMIT_TEST=1000
QUICK_BATCH=32
QUICK_FOLDER=./runs/quick

# The --help text lives beside the sweep's Python tools, so this script stays about what it does.
usage() { cat "$(dirname "${BASH_SOURCE[0]}")/tools/run_exp_help.txt"; }

die() { echo "run_exp.sh: $*" >&2; exit 2; }
note() { echo "$*" >&2; }

# Settings that follow the precedence flag > environment > preset > default.
VARS="DATASETS ARCH CUTLAYERS BOTTLENECK SIGMAS LAMBDAS VAR_THRESHOLD LOG_ENTROPY LR EPOCHS BATCH
ATTACK_EPOCHS GAN_AE_TYPE REGULARIZATION SEEDS DATA_ROOT FOLDER DEVICE EXTRA TAG PYTHON DEFENSES AT_STRENGTHS"
is_set() { eval "[[ -n \${$1+x} ]]"; }

# Remember what the environment says before defaults overwrite the same names.
[[ -n ${DATASET+x} && -z ${DATASETS+x} ]] && DATASETS=$DATASET
[[ -n ${SEED+x} && -z ${SEEDS+x} ]] && SEEDS=$SEED
for v in $VARS; do
  if is_set "$v"; then printf -v "ENV_$v" '%s' "${!v}"; fi
done

QUICK=0
DRY_RUN=0
PRESET=""
PAPER_EXTRA=""
EXEC_ARGS=()  # executor flags, checked and used by tools/sweep.py
set_flag() { printf -v "FLAG_$1" '%s' "$2"; }
while [[ $# -gt 0 ]]; do
  arg=$1
  if [[ $arg == --*=* ]]; then set -- "${arg%%=*}" "${arg#*=}" "${@:2}"; arg=$1; fi
  case $arg in
    -h|--help) usage; exit 0 ;;
    --quick) QUICK=1; shift; continue ;;
    --paper_exact) PAPER_EXTRA=--paper_exact; shift; continue ;;  # main_MIA.py's published-protocol flag set
    --dry-run|--dry_run) DRY_RUN=1; shift; continue ;;
    --executor|--gpus|--jobs|--jobs-per-gpu|--jobs_per_gpu|--slurm_partition|--slurm_time|--slurm_gpus_per_node|\
    --slurm_cpus_per_task|--slurm_mem|--slurm_array_parallelism|--slurm_extra|--submitit_cluster)
      [[ $# -ge 2 ]] || die "option $arg needs a value (see --help)"
      EXEC_ARGS+=("$arg" "$2"); shift 2; continue ;;
  esac
  case $arg in
    --dataset|--datasets|--cutlayer|--cutlayers|--sigma|--sigmas|--lambd|--lambda|--lambdas|--arch|\
    --bottleneck|--bottleneck_option|--var_threshold|--log_entropy|--regularization|--lr|--learning_rate|\
    --epochs|--num_epochs|--batch_size|--batch|--attack_epochs|--gan_AE_type|--seed|--seeds|--random_seed|\
    --data_root|--folder|--device|--extra|--tag|--python|--defenses|--at_strengths|--preset)
      [[ $# -ge 2 ]] || die "option $arg needs a value (see --help)" ;;
    *) die "unknown option '$arg' (see --help)" ;;
  esac
  case $arg in
    --dataset|--datasets) set_flag DATASETS "$2" ;;
    --cutlayer|--cutlayers) set_flag CUTLAYERS "$2" ;;
    --sigma|--sigmas) set_flag SIGMAS "$2" ;;
    --lambd|--lambda|--lambdas) set_flag LAMBDAS "$2" ;;
    --arch) set_flag ARCH "$2" ;;
    --bottleneck|--bottleneck_option) set_flag BOTTLENECK "$2" ;;
    --var_threshold) set_flag VAR_THRESHOLD "$2" ;;
    --log_entropy) set_flag LOG_ENTROPY "$2" ;;
    --regularization) set_flag REGULARIZATION "$2" ;;
    --lr|--learning_rate) set_flag LR "$2" ;;
    --epochs|--num_epochs) set_flag EPOCHS "$2" ;;
    --batch_size|--batch) set_flag BATCH "$2" ;;
    --attack_epochs) set_flag ATTACK_EPOCHS "$2" ;;
    --gan_AE_type) set_flag GAN_AE_TYPE "$2" ;;
    --seed|--seeds|--random_seed) set_flag SEEDS "$2" ;;
    --data_root) set_flag DATA_ROOT "$2" ;;
    --folder) set_flag FOLDER "$2" ;;
    --device) set_flag DEVICE "$2" ;;
    --extra) set_flag EXTRA "$2" ;;
    --tag) set_flag TAG "$2" ;;
    --python) set_flag PYTHON "$2" ;;
    --defenses) set_flag DEFENSES "$2" ;;
    --at_strengths) set_flag AT_STRENGTHS "$2" ;;
    --preset) PRESET=$2 ;;
  esac
  shift 2
done

# Fill every setting for dataset $1: default, then preset, then environment, then flag.
configure() {
  local ds=$1 v
  ARCH=vgg11_bn_sgm CUTLAYERS=4 BOTTLENECK=noRELU_C8S1 VAR_THRESHOLD=0.125
  SIGMAS="0.01 0.025 0.05 0.1 0.15" LAMBDAS="0 8 16" LOG_ENTROPY=1 LR=0.05 EPOCHS=240 BATCH=128
  ATTACK_EPOCHS=50 GAN_AE_TYPE=res_normN8C64 REGULARIZATION=Gaussian_kl SEEDS=125 DATA_ROOT=./data
  FOLDER=./runs/$(safe_name "$ds") DEVICE=auto EXTRA="" TAG="" PYTHON=python
  QUICK_EXTRA="" PRESET_EXTRA="" DEFENSES=None AT_STRENGTHS=1
  if [[ $PRESET == defenses ]]; then
    DEFENSES="None gan_adv_step1 dropout0.2 topkprune0.5 gan_adv_step1_pruning180" AT_STRENGTHS=1
    LAMBDAS="0 16" FOLDER=./runs/cifar10_defenses
    # Dropout / top-k change what is sent: score them as sent and as the published (noise-only) attacker.
    PRESET_EXTRA="--attack_view sent,noise_only"
  fi
  if [[ $PRESET == published ]]; then
    # The authors' run_exp.sh as published: every σ × λ with SCA_new at strength 0.3 (defenses/sca.py).
    DEFENSES=SCA_new AT_STRENGTHS=0.3 SIGMAS="0.01 0.025 0.05 0.1 0.15" LAMBDAS="0 8 16"
    FOLDER=./runs/cifar10_published
  fi
  if [[ $QUICK == 1 ]]; then
    SIGMAS=$QUICK_SIGMAS LAMBDAS=$QUICK_LAMBDAS EPOCHS=$QUICK_EPOCHS ATTACK_EPOCHS=$QUICK_ATTACK_EPOCHS
    BATCH=$QUICK_BATCH LR=$QUICK_LR FOLDER=$QUICK_FOLDER
  fi
  case $ds in
    tinyimagenet) ARCH=resnet20 CUTLAYERS=5 BOTTLENECK=noRELU_C8S1 VAR_THRESHOLD=0.0625 ;;
  esac
  for v in $VARS; do
    [[ $v == DATASETS ]] && continue
    if is_set "ENV_$v"; then eval "$v=\$ENV_$v"; fi
    if is_set "FLAG_$v"; then eval "$v=\$FLAG_$v"; fi
  done
  if [[ $QUICK == 1 && $EPOCHS =~ ^[0-9]+$ ]]; then
    # lr x0.2 at 70% and 90% of the run (never before epoch 2), whatever --epochs says.
    local m1=$(( (EPOCHS * 7 + 5) / 10 )) m2=$(( (EPOCHS * 9 + 5) / 10 ))
    QUICK_EXTRA="--limit_train $QUICK_LIMIT_TRAIN --limit_test $QUICK_LIMIT_TEST --milestones $(( m1 < 2 ? 2 : m1 )),$(( m2 < 2 ? 2 : m2 )) --attack_modes train_time"
  fi
  # A plain `python` is missing on some systems where python3 exists.
  if ! is_set ENV_PYTHON && ! is_set FLAG_PYTHON && ! command -v python >/dev/null 2>&1; then
    PYTHON=python3
  fi
}

# Dataset names like npz:/some/dir/train.npz become filename-safe (npz-train.npz).
safe_name() {
  local d=$1
  if [[ $d == *:* ]]; then local rest=${d#*:}; rest=${rest%/}; d="${d%%:*}-${rest##*/}"; fi
  printf '%s' "$d" | tr -c 'A-Za-z0-9._-' '_'
}

# main_MIA.py settings that run_exp.sh sets per configuration, with the option that sweeps (or sets) each.
SWEPT="dataset:--datasets cutlayer:--cutlayers regularization_strength:--sigmas lambd:--lambdas
AT_regularization:--defenses AT_regularization_strength:--at_strengths random_seed:--seeds"
NUM_RE='^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$'
INT_RE='^[0-9]+$'
validate() {
  local x
  for x in $SIGMAS $LAMBDAS $VAR_THRESHOLD $LR; do
    [[ $x =~ $NUM_RE ]] || die "'$x' is not a non-negative number (check --sigmas/--lambdas/--var_threshold/--lr)"
  done
  for x in $CUTLAYERS $EPOCHS $BATCH $ATTACK_EPOCHS $SEEDS $LOG_ENTROPY; do
    [[ $x =~ $INT_RE ]] || die "'$x' is not a whole number (check --cutlayers/--epochs/--batch_size/--attack_epochs/--seeds/--log_entropy)"
  done
  [[ -n ${SEEDS// /} ]] || die "empty --seeds"
  # A seed given twice is one run planned twice: one mean would count it twice, and two jobs would share a folder.
  x=$(printf '%s\n' $SEEDS | sed 's/^0*\([0-9]\)/\1/' | sort | uniq -d | head -n 1)
  [[ -z $x ]] || die "seed $x is given twice in --seeds '$SEEDS'"
  # main_MIA.py refuses seeds beyond 2**63 - 1 (torch's generators); say so now, not once per planned run.
  for x in $(printf '%s\n' $SEEDS | sed 's/^0*\([0-9]\)/\1/'); do
    [[ ${#x} -lt 19 || ( ${#x} -eq 19 && ! $x > 9223372036854775807 ) ]] ||
      die "seed $x in --seeds is beyond 9223372036854775807 (2**63 - 1), the largest main_MIA.py takes"
  done
  [[ -n $SIGMAS && -n $LAMBDAS && -n $CUTLAYERS ]] || die "empty --sigmas, --lambdas or --cutlayers"
  [[ -n ${DEFENSES// /} && -n ${AT_STRENGTHS// /} ]] || die "empty --defenses or --at_strengths (use None for no extra defence)"
  for x in $AT_STRENGTHS; do
    [[ $x =~ $NUM_RE ]] || die "'$x' is not a non-negative number (check --at_strengths)"
    [[ $x =~ [1-9] ]] || die "--at_strengths 0 switches every --AT_regularization defence off; use --defenses None instead"
  done
  for x in $DEFENSES; do
    [[ $x =~ ^[A-Za-z0-9_.+-]+$ ]] || die "'$x' is not an --AT_regularization value (check --defenses)"
  done
  # "0.05 .5e-1" or "16 16.0": two spellings of one value would plan one run folder twice.
  local opt list
  for opt in sigmas lambdas at_strengths; do
    case $opt in sigmas) list=$SIGMAS ;; lambdas) list=$LAMBDAS ;; *) list=$AT_STRENGTHS ;; esac
    x=$(printf '%s\n' $list | awk '{k = sprintf("%.17g", $1 + 0); if (k in seen) { print seen[k] " and " $1; exit }
                                     seen[k] = $1}')
    [[ -z $x ]] || die "--$opt '$list' gives one value twice ($x are the same number); give each once"
  done
  command -v "$PYTHON" >/dev/null 2>&1 || die "Python interpreter '$PYTHON' not found; set PYTHON=/path/to/venv/bin/python or pass --python"
  # --extra is appended to every configuration and argparse keeps a flag's last value, so an --extra flag
  # the sweep varies would make every configuration of that axis one and the same run.
  if [[ -n ${EXTRA// /} && ${CHECKED_EXTRA-} != "$EXTRA" ]]; then
    # shellcheck disable=SC2086  # EXTRA is a flag string meant to be split into words
    x=$("$PYTHON" -m tools.extra_flags "$SWEPT" $EXTRA 2>&1) || die "${x##*$'\n'}"
    CHECKED_EXTRA=$EXTRA
  fi
  # Without this, a missing torch shows up as "CIFAR-10 could not be downloaded" and one failed run per config.
  if [[ $DRY_RUN != 1 && ${CHECKED_PYTHON-} != "$PYTHON" ]]; then
    "$PYTHON" -c "import torch, torchvision" >/dev/null 2>&1 ||
      die "'$PYTHON' cannot import torch and torchvision: install the requirements into it (pip install -r requirements.txt) or pass --python /path/to/venv/bin/python"
    CHECKED_PYTHON=$PYTHON
  fi
}

cd "$(dirname "${BASH_SOURCE[0]}")" || die "cannot enter the repository folder"
[[ -z $PRESET || $PRESET == defenses || $PRESET == published ]] || die "unknown --preset '$PRESET'; the presets are 'defenses' and 'published'"
[[ $PRESET == defenses && $QUICK == 1 ]] && die "--preset defenses and --quick do not combine; use --preset defenses with --epochs/--extra to shrink it"
[[ $PRESET == defenses ]] && ! is_set FLAG_DATASETS && ! is_set ENV_DATASETS && FLAG_DATASETS=cifar10
[[ $PRESET == published && $QUICK == 1 ]] && die "--preset published and --quick do not combine; use --preset published with --epochs/--extra to shrink it"
[[ $PRESET == published ]] && ! is_set FLAG_DATASETS && ! is_set ENV_DATASETS && FLAG_DATASETS=cifar10

# Datasets: an explicit choice wins; --quick otherwise prefers CIFAR-10 and falls back to digits.
if is_set FLAG_DATASETS; then DATASETS=$FLAG_DATASETS
elif is_set ENV_DATASETS; then DATASETS=$ENV_DATASETS
elif [[ $QUICK == 1 ]]; then
  configure cifar10
  validate
  if [[ $DRY_RUN == 1 ]]; then
    # A dry run runs nothing (a Python check costs seconds of imports), so look for the two layouts the
    # CIFAR loader reads: torchvision's extracted folder and the shared data's small subset.
    if [[ -d $DATA_ROOT/cifar-10-batches-py || -d $DATA_ROOT/cifar10_subset ]]; then
      DATASETS=cifar10
    else
      note "dry run: CIFAR-10 is not under $DATA_ROOT, so these commands use the fallback, scikit-learn's handwritten digits (a real run first tries to download CIFAR-10)"
      DATASETS=digits
    fi
  else
    note "checking for CIFAR-10 under $DATA_ROOT (downloads it, about 170 MB, when missing and online) ..."
    check_out=$("$PYTHON" -m datasets check cifar10 --data_root "$DATA_ROOT" 2>&1); cifar_ok=$?
    # The check's own last line; its "error:" prefix dropped, since the quick run goes on without CIFAR-10.
    check_msg=${check_out##*$'\n'}
    [[ -z $check_out ]] || note "  ${check_msg#error: }"
  fi
  if [[ $DRY_RUN == 1 ]]; then :
  elif [[ $cifar_ok == 0 ]]; then DATASETS=cifar10
  else
    note "CIFAR-10 is not under $DATA_ROOT and could not be downloaded: falling back to scikit-learn's handwritten digits (real images, 8x8 upscaled to 32x32); pass --data_root <folder with cifar-10-batches-py> to use CIFAR-10"
    DATASETS=digits
  fi
else DATASETS=cifar10
fi
[[ -n ${DATASETS// /} ]] || die "empty --datasets"

# Print a command so that it can be pasted back into a shell.
quote() { local a q out=""; for a in "$@"; do printf -v q '%q' "$a"; out+="$q "; done; printf '%s' "${out% }"; }

n_skip=0 n_todo=0
folders=()
declare -A finished_in=()  # folders holding a finished configuration of this sweep: the ones to report
# The configurations to run, for tools/sweep.py: per job the NUL-terminated name, log, argc, argv...
JOBS_FILE=$(mktemp "${TMPDIR:-/tmp}/run_exp_jobs.XXXXXX") || die "cannot create a temporary file (TMPDIR)"
# What the sweep finished and why the rest failed (tools/sweep_failures.py's write_outcome).
OUTCOME=$(mktemp "${TMPDIR:-/tmp}/run_exp_outcome.XXXXXX") ||
  { rm -f "$JOBS_FILE"; die "cannot create a temporary file (TMPDIR)"; }
trap 'rm -f "$JOBS_FILE" "$OUTCOME"' EXIT

for ds in $DATASETS; do
  configure "$ds"
  validate
  [[ " ${folders[*]-} " == *" $FOLDER "* ]] || folders+=("$FOLDER")
  for cut in $CUTLAYERS; do
   for def in $DEFENSES; do
    # A run without an extra defence needs no strength: one run, not one per strength.
    if [[ ${def,,} == none ]]; then strengths=0; else strengths=$AT_STRENGTHS; fi
    for st in $strengths; do
    for s in $SIGMAS; do
     # λ innermost: each seed's λ = 0 run and its λ > 0 partners run one after another, so a sweep
     # stopped early leaves whole pairs for the report's paired CEM gain.
     for seed in $SEEDS; do
      for l in $LAMBDAS; do
        # shellcheck disable=SC2206  # EXTRA is a flag string meant to be split into words
        args=(--arch "$ARCH" --cutlayer "$cut" --bottleneck_option "$BOTTLENECK"
              --regularization "$REGULARIZATION" --regularization_strength "$s" --lambd "$l"
              --var_threshold "$VAR_THRESHOLD" --log_entropy "$LOG_ENTROPY" --learning_rate "$LR"
              --num_epochs "$EPOCHS" --batch_size "$BATCH" --attack_epochs "$ATTACK_EPOCHS"
              --gan_AE_type "$GAN_AE_TYPE" --dataset "$ds" --data_root "$DATA_ROOT" --folder "$FOLDER"
              --random_seed "$seed" --device "$DEVICE" $PRESET_EXTRA $QUICK_EXTRA $PAPER_EXTRA $EXTRA)
        [[ ${def,,} == none ]] || args+=(--AT_regularization "$def" --AT_regularization_strength "$st")
        # The run's name and state come from the run identity (lifecycle/identity.py): every setting that
        # changes results, --extra flags included, so a changed setting is a new configuration.
        plan=$("$PYTHON" -m lifecycle.plan ${TAG:+--suffix "$TAG"} "${args[@]}" 2>&1) ||
          die "cannot plan $(quote main_MIA.py "${args[@]}"): ${plan##*$'\n'}"
        plan=${plan##*$'\n'}
        state=${plan%% *} fn=${plan#* }
        cmd=("$PYTHON" main_MIA.py "${args[@]}" --filename "$fn")
        if [[ $state == finished ]]; then
          n_skip=$((n_skip + 1))
          finished_in[$FOLDER]=1
          [[ $DRY_RUN == 1 ]] && echo "[skip] $(quote "${cmd[@]}")"
          continue
        fi
        case $state in
          resume) cmd+=(--resume) ;;               # a killed run: continue it instead of starting over
          attack|incomplete) cmd+=(--attack_only) ;;  # trained: add the missing attack results
        esac
        n_todo=$((n_todo + 1))
        [[ $DRY_RUN == 1 ]] && echo "$(quote "${cmd[@]}")"
        printf '%s\0' "$fn" "$FOLDER/$fn.log" "${#cmd[@]}" "${cmd[@]}" >> "$JOBS_FILE"
      done
     done
    done
    done
   done
  done
done

if [[ $DRY_RUN == 1 ]]; then
  note "dry run: $n_todo to run, $n_skip already finished; nothing was run"
  "$PYTHON" -m tools.sweep "$JOBS_FILE" --dry-run "${EXEC_ARGS[@]+"${EXEC_ARGS[@]}"}"
  exit $?
fi
[[ -f main_MIA.py ]] || die "main_MIA.py not found in $(pwd)"
for folder in "${folders[@]}"; do
  mkdir -p "$folder" || die "cannot create results folder '$folder'; pass a writable --folder"
done

# tools/sweep.py runs the jobs (concurrently, or on Slurm) and prints the summary. It runs in the
# background so that a SIGTERM to this script (a scheduler's) is passed on at once, not after it ends.
"$PYTHON" -m tools.sweep "$JOBS_FILE" --skipped "$n_skip" --outcome "$OUTCOME" "${EXEC_ARGS[@]+"${EXEC_ARGS[@]}"}" &
sweep_pid=$!
trap 'kill -TERM "$sweep_pid" 2>/dev/null' TERM
trap 'kill -INT "$sweep_pid" 2>/dev/null' INT
while :; do
  wait "$sweep_pid"; sweep_rc=$?
  kill -0 "$sweep_pid" 2>/dev/null || break  # wait also returns when a trapped signal arrives
done
trap - INT TERM
[[ $sweep_rc == 2 || $sweep_rc -ge 128 ]] && exit "$sweep_rc"  # bad executor options; interrupted

# After failures, report only folders where something finished: elsewhere the report could only say
# "no finished metrics.json", burying the configurations' own errors (the sweep's last line).
fail_line=""
if [[ $sweep_rc == 1 && -s $OUTCOME ]]; then
  { IFS= read -r fail_line; while IFS= read -r log; do finished_in[${log%/*}]=1; done; } < "$OUTCOME"
else
  for folder in "${folders[@]}"; do finished_in[$folder]=1; done
fi

report_rc=0
pages=()
for folder in "${folders[@]}"; do
  if [[ -z ${finished_in[$folder]+x} ]]; then
    [[ ${#finished_in[@]} -gt 0 ]] && note "no report for $folder: none of its configurations finished"
    continue
  fi
  echo
  if "$PYTHON" -m tools.report "$folder"; then
    pages+=("$folder/report.html")
  else
    report_rc=$?
  fi
  if [[ $QUICK == 1 ]]; then
    [[ -f $folder/tradeoff.png ]] && echo "trade-off plot: $folder/tradeoff.png"
    for l in $LAMBDAS; do
      # The train_time grid matches the table's default mode; any grid will do otherwise.
      grid=$(find "$folder" -path "*_lambd${l}_*/images/*.png" 2>/dev/null |
             awk '/decoder_train_time\.png$/ {print "0 " $0; next} {print "1 " $0}' | sort | head -n 1 | cut -c3-)
      [[ -n $grid ]] && echo "reconstructions (λ=$l): $grid"
    done
  fi
done
# The page holds every table, plot, grid and training curve: the one path to open after a sweep.
for page in "${pages[@]+"${pages[@]}"}"; do echo "report page: $page"; done

if [[ $sweep_rc == 1 ]]; then
  # A report was printed after the sweep's error line: repeat it, so the last word is what failed.
  [[ ${#finished_in[@]} -gt 0 && -n $fail_line ]] && note "error: $fail_line"
  exit 1
fi
exit "$report_rc"
