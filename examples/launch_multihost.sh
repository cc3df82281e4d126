#!/usr/bin/env bash
# Launch examples/distributed_train.py as N cooperating JAX processes.
#
# Demo on ONE machine (CPU, loopback only):
#
#     bash examples/launch_multihost.sh            # 2 processes x 2 CPU devices = 4 devices
#     bash examples/launch_multihost.sh 3 --epochs 5 --batch-size 96
#
# starts N background processes that talk over 127.0.0.1:$PORT.  Each gets
# JAX_NUM_CPU_DEVICES=$DEVICES_PER_PROCESS simulated CPU devices, so the global mesh has
# N * DEVICES_PER_PROCESS devices and every minibatch is split over all of them; the gradient
# all-reduce crosses processes (JAX's gloo CPU collectives over TCP).  Process 0 prints; the
# others' output goes to $LOG_DIR/process_<i>.log.  Extra arguments go to the script.
#
# Environment knobs (all optional):
#     PORT=12355                 coordinator port on 127.0.0.1
#     DEVICES_PER_PROCESS=2      simulated CPU devices per process
#     PYTHON=python              interpreter with mlds_jax installed (e.g. .venv/bin/python)
#     LOG_DIR=$(mktemp -d)       where the logs of processes 1 .. N-1 go
#     TIMEOUT=300                seconds before every process is stopped
#
# What every process needs is three variables (read by distributed_train.py, see its
# docstring):
#     MLDS_COORDINATOR=host:port     process 0's address, reachable by all processes
#     MLDS_NUM_PROCESSES=N
#     MLDS_PROCESS_ID=0..N-1         a different rank per process
#
# --- Real clusters ----------------------------------------------------------------------------
# GPUs: one process per host (each sees its local GPUs) or one per GPU
# (CUDA_VISIBLE_DEVICES=i, or JAX_LOCAL_DEVICE_IDS=i).  Do not set JAX_NUM_CPU_DEVICES.  The
# coordinator is any port on host 0 that the other hosts can reach; NCCL does the all-reduce.
#
# Two hosts by hand:
#     host0$ MLDS_COORDINATOR=host0:12355 MLDS_NUM_PROCESSES=2 MLDS_PROCESS_ID=0 \
#              python examples/distributed_train.py --epochs 20
#     host1$ MLDS_COORDINATOR=host0:12355 MLDS_NUM_PROCESSES=2 MLDS_PROCESS_ID=1 \
#              python examples/distributed_train.py --epochs 20
#
# SLURM (sbatch), one task per node:
#     #SBATCH --nodes=4 --ntasks-per-node=1 --gpus-per-node=8
#     export MLDS_COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):12355"
#     export MLDS_NUM_PROCESSES="$SLURM_NTASKS"
#     srun bash -c 'MLDS_PROCESS_ID=$SLURM_PROCID python examples/distributed_train.py'
# or let JAX read SLURM's variables itself:
#     srun python examples/distributed_train.py --auto-cluster
# (Open MPI's mpirun and Kubernetes indexed jobs are detected by --auto-cluster as well.)
# -----------------------------------------------------------------------------------------------
set -euo pipefail

N="${1:-2}"
shift || true
PORT="${PORT:-12355}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-2}"
PYTHON="${PYTHON:-python}"
TIMEOUT="${TIMEOUT:-300}"
LOG_DIR="${LOG_DIR:-$(mktemp -d)}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [NUM_PROCESSES] [distributed_train.py options]" >&2
    exit 2
fi
mkdir -p "$LOG_DIR"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
# However the launcher ends (a failed process, Ctrl-C, SIGTERM from a test's timeout), no
# process outlives it.
trap cleanup EXIT
trap 'exit 130' INT TERM

export MLDS_COORDINATOR="127.0.0.1:${PORT}"
export MLDS_NUM_PROCESSES="$N"
export JAX_NUM_CPU_DEVICES="$DEVICES_PER_PROCESS"
export JAX_PLATFORMS=cpu

for ((i = 0; i < N; i++)); do
    if ((i == 0)); then
        MLDS_PROCESS_ID=0 timeout "$TIMEOUT" "$PYTHON" "$HERE/distributed_train.py" "$@" &
    else
        MLDS_PROCESS_ID="$i" timeout "$TIMEOUT" "$PYTHON" "$HERE/distributed_train.py" "$@" \
            >"$LOG_DIR/process_$i.log" 2>&1 &
    fi
    pids+=("$!")
done

# Wait for all; the first process that fails stops the others at once (they would otherwise
# wait for it in a collective until the timeout).
running=("${!pids[@]}")
while ((${#running[@]} > 0)); do
    still=()
    for i in "${running[@]}"; do
        if kill -0 "${pids[$i]}" 2>/dev/null; then
            still+=("$i")
        elif ! wait "${pids[$i]}"; then
            echo "process $i failed (log: $LOG_DIR/process_$i.log)" >&2
            exit 1
        fi
    done
    running=("${still[@]}")
    ((${#running[@]} == 0)) || sleep 0.2
done
exit 0
