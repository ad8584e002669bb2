#!/usr/bin/env bash
# One node's share of a multi-node job: run this on every node with the same environment.
#   NNODES (number of nodes), MASTER_ADDR (host of the rendezvous), MASTER_PORT (default 29500),
#   NPROC_PER_NODE (default: GPUs on this node, or 1 on a CPU node),
#   MAX_RESTARTS (default 0): restart the job this many times after a rank fails (it resumes
#   from its newest complete checkpoint),
#   RUN_ID (optional, same on all nodes): the run dir is runs/$RUN_ID, so launching again with
#   the same RUN_ID resumes that run (SLURM requeue). Unset: every job gets a new run dir
#   (runs/<experiment or model>-<time>-<random>, chosen by rank 0).
# Extra arguments are Hydra overrides, e.g. parallel.cp=8 parallel.cp_algo=cad.
set -euo pipefail
: "${NNODES:?set NNODES to the number of nodes}"
: "${MASTER_ADDR:?set MASTER_ADDR to the rendezvous host (e.g. the first node)}"
MASTER_PORT=${MASTER_PORT:-29500}
NPROC_PER_NODE=${NPROC_PER_NODE:-$(python3 -c 'import torch; print(torch.cuda.device_count() or 1)')}
RUN_DIR=()
if [ -n "${RUN_ID:-}" ]; then RUN_DIR=("run_dir=runs/$RUN_ID"); fi
if [ -z "${OMP_NUM_THREADS:-}" ]; then  # CPU ranks share the node's idle cores
  OMP_NUM_THREADS=$(python3 -c "import torch; from distca.lifecycle.process_group import cpu_threads; print(1 if torch.cuda.is_available() else cpu_threads($NPROC_PER_NODE))")
  export OMP_NUM_THREADS
fi
# the rendezvous id only has to be shared by this job's nodes; the run dir comes from RUN_ID
exec python3 -m launch.torchrun \
  --nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" --max-restarts "${MAX_RESTARTS:-0}" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
  --rdzv_id "${RUN_ID:-distca-$MASTER_ADDR-$MASTER_PORT}" \
  -m distca.train ${RUN_DIR[@]+"${RUN_DIR[@]}"} "$@"
