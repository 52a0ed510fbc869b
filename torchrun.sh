#!/usr/bin/env bash
# Launch the s1 fine-tuning run (train.py) with torchrun: one node, several nodes, or a SLURM job.
# Extra arguments go to train.py unchanged.
#
#   bash torchrun.sh                                    # this node, all its GPUs
#   bash torchrun.sh --block-size 20000 --out-dir out/s1.1
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash torchrun.sh   # on node0, and NODE_RANK=1 on node1
#   sbatch torchrun.sh                                  # SLURM: 2 nodes x 8 GPUs (see #SBATCH below)
#
# Under SLURM it reads the allocation itself: the batch script starts one torchrun per node with srun,
# and the nodes meet at the first node of the job (c10d rendezvous, so no node needs to know its rank).
# To adapt: change the #SBATCH lines (nodes, GPUs, time, partition/account), or set NPROC_PER_NODE,
# MASTER_PORT; on clusters with InfiniBand, NCCL usually finds it alone (NCCL_DEBUG=INFO shows what
# it picked; NCCL_SOCKET_IFNAME=<iface> if it chooses the wrong network). DRY_RUN=1 prints the command.
#
#SBATCH --job-name=s1
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=02:00:00
set -euo pipefail

# sbatch runs a copy of this script from its spool directory: the repository is where it was submitted.
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")}"

if command -v nvidia-smi >/dev/null 2>&1; then GPUS=$(nvidia-smi -L | wc -l); else GPUS=1; fi
NPROC_PER_NODE=${NPROC_PER_NODE:-$GPUS}
MASTER_PORT=${MASTER_PORT:-29500}

run() {
    { printf '+'; printf ' %q' "$@"; echo; } >&2
    if [[ -z "${DRY_RUN:-}" ]]; then exec "$@"; fi
}

if [[ -n "${SLURM_JOB_ID:-}" && -z "${SLURM_STEP_ID:-}" ]]; then
    # The batch script (or salloc shell): one srun task per node, each running torchrun.
    NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
    MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
    run srun --nodes="$NNODES" --ntasks-per-node=1 \
        torchrun --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" \
        --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
        train.py "$@"
else
    # By hand (or already inside an srun task): this node's rank comes from the environment.
    NNODES=${NNODES:-${SLURM_NNODES:-1}}
    NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
    if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
        MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
    fi
    MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
    run torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
        --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
        train.py "$@"
fi
