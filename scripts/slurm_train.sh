#!/usr/bin/env bash
# Train on several nodes under SLURM: srun starts one deepspeed launcher per node, which starts one rank per GPU.
#
#   sbatch --nodes 2 --gpus-per-node 8 scripts/slurm_train.sh configs/llava_dora.yaml [key=value ...]
#
# Submit from the checkout: every node's launcher starts in the submission directory, so the checkout (and the data
# the config names) must be at that path on every node, shared or copied. Each node's launcher runs
#   deepspeed --hostfile <the job's nodes> --no_ssh --node_rank $SLURM_NODEID --master_addr <first node> ...
# as tests/train/test_two_nodes.py does. Environment (export before sbatch; srun passes it to every node):
#   MASTER_ADDR     the first node's address the others reach (default: its name from scontrol)
#   MASTER_PORT     a free port there (default 29500)
#   GPUS_PER_NODE   ranks per node (default: SLURM_GPUS_ON_NODE, set by --gpus-per-node; else 1)
#   VLFT_CACHE_DIR  prepared-data cache, node-local or shared; HF_HOME: the hub cache
#   NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME  the network interface between nodes, where there are several
#SBATCH --job-name=vlft
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail

if [[ -z "${VLFT_NODE_LAUNCH:-}" ]]; then
    # The batch step, on the first node: start this script once on every node of the job.
    MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
    export MASTER_ADDR MASTER_PORT=${MASTER_PORT:-29500} VLFT_NODE_LAUNCH=1
    exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash scripts/slurm_train.sh "$@"
fi

# One task per node: the job's nodes as a DeepSpeed hostfile, then this node's launcher.
hostfile=$(mktemp)
trap 'rm -f "$hostfile"' EXIT
scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\$/ slots=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}/" > "$hostfile"
deepspeed --hostfile "$hostfile" --no_ssh --node_rank "$SLURM_NODEID" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" scripts/train.py "$@"
