#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the real-Slurm tests (tests/test_slurm_cluster.py).
#
#   tools/ci/slurm_up.sh up     install slurm-wlm if missing (apt-get), start munged, slurmctld, slurmd;
#                               wait until sinfo shows the node idle. Exit 0: up; 1: cannot start (the
#                               reason is the last stderr line and is kept in $CEM_SLURM_DIR/unavailable).
#   tools/ci/slurm_up.sh down   stop the daemons this script started (by their pid files); idempotent.
#
# Everything lives in $CEM_SLURM_DIR (default /tmp/cem-slurm): slurm.conf, state, logs, pid files.
# Clients find the cluster through SLURM_CONF=$CEM_SLURM_DIR/slurm.conf, so /etc/slurm is never written
# and a machine's own Slurm setup is left alone. Meant for a CI container run as root.
set -uo pipefail

DIR=${CEM_SLURM_DIR:-/tmp/cem-slurm}
CONF=$DIR/slurm.conf
NODE=localhost

fail() {
    mkdir -p "$DIR" && printf '%s\n' "$*" > "$DIR/unavailable"
    echo "slurm_up: $*" >&2
    exit 1
}

stop_pidfile() {  # only processes this script started: their pid files are in $DIR
    local f=$1 pid
    [[ -f $f ]] || return 0
    pid=$(cat "$f" 2>/dev/null)
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$f"
}

down() {
    # Jobs first, so that no task outlives the cluster (slurmd would otherwise leave them running).
    if [[ -f $DIR/slurmctld.pid ]] && command -v scancel >/dev/null 2>&1; then
        SLURM_CONF=$CONF timeout 10 scancel --full --quiet --partition=ci 2>/dev/null
    fi
    stop_pidfile "$DIR/slurmd.pid"
    stop_pidfile "$DIR/slurmctld.pid"
    stop_pidfile "$DIR/munged.pid"
    return 0
}

install() {
    command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v sinfo >/dev/null 2>&1 &&
        command -v munged >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || fail "Slurm is not installed and apt-get is not available to install it (slurm-wlm)"
    [[ $(id -u) == 0 ]] || fail "Slurm is not installed and installing it (apt-get install slurm-wlm) needs root"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm; } >"$DIR/apt.log" 2>&1 ||
        fail "apt-get install slurm-wlm failed: $(tail -n 1 "$DIR/apt.log")"
}

write_conf() {
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$DIR/state" "$DIR/spool"
    # linuxproc tracking and no task plugin: a container has no delegated cgroups. KillWait 5 s is
    # enough for a tiny run to save its checkpoint after SIGTERM; OverTimeLimit 0 ends a job at its
    # limit; MinJobAge keeps finished jobs visible to squeue/scontrol for a minute.
    cat > "$CONF" <<EOF
ClusterName=cemci
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=5
OverTimeLimit=0
InactiveLimit=0
MinJobAge=60
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=ci Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    # One munged per machine serves every Slurm daemon; reuse one that already answers.
    if command -v munge >/dev/null 2>&1 && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    local key=/etc/munge/munge.key
    if [[ ! -s $key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of="$key" bs=1 count=1024 status=none || fail "cannot write a munge key to $key"
    fi
    chmod 0400 "$key"
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    # munged refuses to run as root unless forced; the package's munge user is its normal owner (and
    # must be able to write the pid file, hence /run/munge).
    local pidfile=/run/munge/munged.pid
    if id munge >/dev/null 2>&1; then
        chown munge: "$key" /run/munge /var/lib/munge /var/log/munge
        runuser -u munge -- munged --pid-file="$pidfile" 2>"$DIR/munged.err" ||
            fail "munged did not start: $(tail -n 1 "$DIR/munged.err")"
    else
        munged --force --pid-file="$pidfile" 2>"$DIR/munged.err" ||
            fail "munged did not start: $(tail -n 1 "$DIR/munged.err")"
    fi
    cp "$pidfile" "$DIR/munged.pid"
}

up() {
    mkdir -p "$DIR" || { echo "slurm_up: cannot create $DIR" >&2; exit 1; }
    rm -f "$DIR/unavailable"
    export SLURM_CONF=$CONF
    if [[ -f $DIR/slurmctld.pid ]] && sinfo -h -o %T 2>/dev/null | grep -qx idle; then
        return 0  # already up (idempotent)
    fi
    install
    down
    write_conf
    start_munge
    # -i: ignore saved state from an earlier run of this script (stale jobs, node states).
    slurmctld -i -f "$CONF" >"$DIR/slurmctld.out" 2>&1 || fail "slurmctld did not start: $(tail -n 1 "$DIR/slurmctld.out")"
    slurmd -N "$NODE" -f "$CONF" >"$DIR/slurmd.out" 2>&1 || fail "slurmd did not start: $(tail -n 1 "$DIR/slurmd.out")"
    local state=""
    for _ in $(seq 60); do
        state=$(sinfo -h -N -o %T 2>/dev/null | head -n 1)
        [[ $state == idle ]] && { echo "slurm_up: one-node cluster up (SLURM_CONF=$CONF)" >&2; return 0; }
        sleep 1
    done
    fail "the node did not become idle within 60 s (sinfo says '${state:-nothing}'; logs in $DIR)"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
