#!/usr/bin/env bash
# One node's share of a multi-node job: run this on every node with the same environment.
#   NNODES (number of nodes), MASTER_ADDR (host of the rendezvous), MASTER_PORT (default 29500),
#   NPROC_PER_NODE (default: GPUs on this node), RUN_ID (same on all nodes; names the run dir).
# Extra arguments are Hydra overrides, e.g. parallel.cp=8 parallel.cp_algo=cad.
set -euo pipefail
: "${NNODES:?set NNODES to the number of nodes}"
: "${MASTER_ADDR:?set MASTER_ADDR to the rendezvous host (e.g. the first node)}"
MASTER_PORT=${MASTER_PORT:-29500}
NPROC_PER_NODE=${NPROC_PER_NODE:-$(python3 -c 'import torch; print(torch.cuda.device_count() or 1)')}
RUN_ID=${RUN_ID:-distca-$(date +%Y%m%d)}
exec python3 -m torch.distributed.run \
  --nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "$RUN_ID" \
  -m distca.train "$@"
