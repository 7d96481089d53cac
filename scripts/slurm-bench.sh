#!/usr/bin/env bash
# Slurm's side of benchmark P6: N (default 1000) separate `sbatch --wrap true` jobs on a
# single-node Slurm (Debian's slurm-wlm) on this host, from the first submit until the queue
# is empty; prints `slurm_jobs=N slurm_seconds=X slurm_jobs_per_s=Y`.
#
# Installs slurm-wlm if missing (apt, without starting its services), then runs its own munged
# (own key and socket), slurmctld and slurmd in the foreground from a slurm.conf in a temp dir,
# as root, tuned as Slurm's high-throughput guide suggests (https://slurm.schedmd.com/
# high_throughput.html): no accounting or job-accounting gathering, low debug levels, a
# large MaxJobCount, small MinJobAge, short MessageTimeout, SchedulerParameters defer,
# sched_min_interval, max_rpc_cnt, batch_sched_delay, default_queue_depth. Everything it starts
# is stopped by PID on exit and the temp dir removed. If Slurm cannot run here it prints
# `slurm_unavailable=<why>` and exits 0.
#
# Usage: scripts/slurm-bench.sh [JOBS]   (env: SLURM_BENCH_IN_FLIGHT, default 16 submits at once)
set -euo pipefail

JOBS=${1:-1000}
IN_FLIGHT=${SLURM_BENCH_IN_FLIGHT:-16}
CTLD_PORT=${SLURM_BENCH_CTLD_PORT:-16817}
SLURMD_PORT=${SLURM_BENCH_SLURMD_PORT:-16818}
# The high-throughput guide's scheduler settings; override to compare.
SCHED_PARAMS=${SLURM_BENCH_SCHED_PARAMS:-defer,sched_interval=1,sched_min_interval=2000,max_rpc_cnt=150,batch_sched_delay=0,default_queue_depth=1000,sched_max_job_start=0}
# Jobs per CPU at once (partition OverSubscribe=FORCE:N); 1 = one job per CPU, Slurm's default.
OVERSUBSCRIBE=${SLURM_BENCH_OVERSUBSCRIBE:-1}
PART_EXTRA=
[ "$OVERSUBSCRIBE" -gt 1 ] && PART_EXTRA="OverSubscribe=FORCE:$OVERSUBSCRIBE"

unavailable() {
    echo "slurm_unavailable=$*"
    exit 0
}

[ "$(id -u)" = 0 ] || unavailable "must run as root (slurmd runs jobs as their user)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm (apt)..." >&2
    # Keep apt from starting the packaged services: this script starts its own.
    policy_added=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
    fi
    status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm >&2; } || status=$?
    [ -n "$policy_added" ] && rm -f /usr/sbin/policy-rc.d
    [ "$status" = 0 ] || unavailable "apt-get install slurm-wlm failed ($status)"
fi

DIR=$(mktemp -d /tmp/slurm-bench.XXXXXX)
chmod 700 "$DIR"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ -z "$alive" ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP_SLURM_BENCH_DIR:-}" ]; then echo "kept $DIR" >&2; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge" "$DIR/out"
chmod 700 "$DIR/munge"

# munge: its own key, socket, pid and log, in the temp dir (root needs --force).
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$DIR/munge/munge.key"
SOCKET="$DIR/munge/munge.socket"
munged --foreground --force --key-file="$DIR/munge/munge.key" --socket="$SOCKET" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed" --num-threads=4 2>>"$DIR/munge/munged.err" &
MUNGED=$!
PIDS+=("$MUNGED")
for _ in $(seq 50); do [ -S "$SOCKET" ] && break; sleep 0.1; done
[ -S "$SOCKET" ] || unavailable "munged did not start: $(tail -3 "$DIR/munge/munged.log" "$DIR/munge/munged.err" 2>/dev/null | tr '\n' ' ')"

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

# The cgroup plugins need cgroup.conf and a cgroup hierarchy slurmd may own; try them first and
# fall back to linuxproc / task/none when slurmd cannot start with them (sandboxes, containers).
write_conf() { # proctrack task
    cat >"$DIR/slurm.conf" <<EOF
ClusterName=bench
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldDebug=error
SlurmdDebug=error
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=$1
TaskPlugin=$2
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
MailProg=/bin/true
MaxJobCount=20000
MinJobAge=2
MessageTimeout=5
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=1
SchedulerParameters=$SCHED_PARAMS
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=bench Nodes=$HOST Default=YES MaxTime=INFINITE State=UP $PART_EXTRA
EOF
    cat >"$DIR/cgroup.conf" <<EOF
CgroupPlugin=autodetect
ConstrainCores=no
ConstrainRAMSpace=no
CgroupMountpoint=/sys/fs/cgroup
EOF
}
export SLURM_CONF="$DIR/slurm.conf"

start_daemons() { # proctrack task
    write_conf "$1" "$2"
    rm -rf "$DIR/state"/* "$DIR/spool"/*
    slurmctld -D -i -f "$SLURM_CONF" >>"$DIR/slurmctld.out" 2>&1 &
    CTLD=$!
    PIDS+=("$CTLD")
    slurmd -D -f "$SLURM_CONF" >>"$DIR/slurmd.out" 2>&1 &
    SLURMD=$!
    PIDS+=("$SLURMD")
    for _ in $(seq 150); do
        if ! kill -0 "$CTLD" 2>/dev/null || ! kill -0 "$SLURMD" 2>/dev/null; then break; fi
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then return 0; fi
        sleep 0.2
    done
    kill -TERM "$CTLD" "$SLURMD" 2>/dev/null || true
    wait "$CTLD" "$SLURMD" 2>/dev/null || true
    PIDS=("$MUNGED") # both reaped: their PIDs are not ours to signal any more
    return 1
}

CONFIG=
for plugins in "proctrack/cgroup task/none" "proctrack/linuxproc task/none" "proctrack/pgid task/none"; do
    # shellcheck disable=SC2086
    if start_daemons $plugins; then
        CONFIG=$plugins
        break
    fi
    echo "slurm did not come up with $plugins: $(tail -2 "$DIR/slurmd.out" "$DIR/slurmctld.out" 2>/dev/null | tr '\n' ' ')" >&2
done
[ -n "$CONFIG" ] || unavailable "slurmd/slurmctld did not start with cgroup, linuxproc or pgid process tracking: $(tail -3 "$DIR/slurmd.out" "$DIR/slurmctld.out" 2>/dev/null | tr '\n' ' ')"
echo "slurm $(slurmctld -V | awk '{print $2}') up: $HOST, CPUs=$CPUS, $CONFIG, sched/builtin, select/cons_tres, OverSubscribe=$OVERSUBSCRIBE, SchedulerParameters=$SCHED_PARAMS" >&2

# A warm-up job, so the first measured one does not pay for slurmd's first launch.
sbatch -Q -o /dev/null --wrap true >/dev/null
for _ in $(seq 300); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
: >"$DIR/jobcomp.txt"

start=$(date +%s.%N)
seq "$JOBS" | xargs -P "$IN_FLIGHT" -I{} sbatch -J "b{}" -o /dev/null --parsable --wrap true >"$DIR/submitted" 2>"$DIR/submit.err" || true
submitted_at=$(date +%s.%N)
submitted=$(grep -c . "$DIR/submitted" || true)
[ "$submitted" = "$JOBS" ] || unavailable "only $submitted of $JOBS sbatch calls succeeded: $(head -3 "$DIR/submit.err" | tr '\n' ' ')"
deadline=$((SECONDS + 3600))
while :; do
    queued=$(squeue -h -o %i 2>/dev/null | wc -l) || queued=-1
    [ "$queued" = 0 ] && break
    [ "$SECONDS" -lt "$deadline" ] || unavailable "$queued jobs still queued after an hour"
    sleep 0.1
done
end=$(date +%s.%N)
completed=$(grep -c 'JobState=COMPLETED' "$DIR/jobcomp.txt" || true)
other=$(grep -vc 'JobState=COMPLETED' "$DIR/jobcomp.txt" || true)
awk -v s="$start" -v e="$end" -v u="$submitted_at" -v n="$JOBS" -v c="$completed" -v o="$other" 'BEGIN {
    printf "slurm: %d sbatch accepted in %.2f s (%.0f/s); queue empty after %.2f s; %d completed, %d not\n", n, u - s, n / (u - s), e - s, c, o > "/dev/stderr"
}'
[ "$completed" = "$JOBS" ] || unavailable "only $completed of $JOBS jobs completed (jobcomp), $other ended otherwise"
awk -v s="$start" -v e="$end" -v n="$JOBS" 'BEGIN { printf "slurm_jobs=%d slurm_seconds=%.2f slurm_jobs_per_s=%.2f\n", n, e - s, n / (e - s) }'
