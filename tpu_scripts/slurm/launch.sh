#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# One cel-jax process of a SLURM job step (srun starts one per node, or one per GPU). Sets the arguments of
# jax.distributed.initialize for cel_jax.scale.distributed and runs the command line it is given:
#   srun tpu_scripts/slurm/launch.sh [--dry-run] unlearn --config=configs/X.py --workdir=DIR [flags]
#   CEL_JAX_COORDINATOR       first node of the step, port CEL_JAX_COORDINATOR_PORT (default from the job id)
#   CEL_JAX_NUM_PROCESSES     SLURM_NTASKS
#   CEL_JAX_PROCESS_ID        SLURM_PROCID
#   CEL_JAX_LOCAL_DEVICE_IDS  SLURM_LOCALID when a node runs several tasks (one process per GPU)
# CEL_JAX_BIN overrides the executable (default: cel-jax on PATH).
set -euo pipefail
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_flags "$@"
((${#ARGS[@]} >= 1)) || die "usage: launch.sh [--dry-run] unlearn|finetune|eval --config=... [flags]"
: "${SLURM_NTASKS:?launch.sh runs under srun (SLURM_NTASKS is not set)}"
: "${SLURM_PROCID:?launch.sh runs under srun (SLURM_PROCID is not set)}"
nodelist=${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}
[[ -n $nodelist ]] || die "neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set"

# first_host NODELIST: 'gpu[003-008,010],cpu1' -> gpu003 (the same rule as cel_jax.scale.distributed).
first_host() {
  local list=$1 first="" depth=0 ch i
  for ((i = 0; i < ${#list}; i++)); do
    ch=${list:i:1}
    if [[ $ch == , ]] && ((depth == 0)); then break; fi
    if [[ $ch == '[' ]]; then depth=$((depth + 1)); fi
    if [[ $ch == ']' ]]; then depth=$((depth - 1)); fi
    first+=$ch
  done
  local re='^([^[]*)\[([^],-]*)[^]]*\](.*)$'
  while [[ $first =~ $re ]]; do
    first=${BASH_REMATCH[1]}${BASH_REMATCH[2]}${BASH_REMATCH[3]}
  done
  printf '%s\n' "$first"
}

if command -v scontrol >/dev/null 2>&1 && [[ $DRY_RUN != 1 ]]; then
  head_node=$(scontrol show hostnames "$nodelist" | awk 'NR == 1')
else
  head_node=$(first_host "$nodelist")
fi
port=${CEL_JAX_COORDINATOR_PORT:-$((${SLURM_JOB_ID:-0} % 4096 + 61440))}
tasks_per_node=${SLURM_NTASKS_PER_NODE:-1}
tasks_per_node=${tasks_per_node%%[!0-9]*} # "8(x2)" -> 8

export CEL_JAX_COORDINATOR=$head_node:$port
export CEL_JAX_NUM_PROCESSES=$SLURM_NTASKS
export CEL_JAX_PROCESS_ID=$SLURM_PROCID
names=(CEL_JAX_COORDINATOR CEL_JAX_NUM_PROCESSES CEL_JAX_PROCESS_ID)
if ((${tasks_per_node:-1} > 1)) && [[ -z ${CEL_JAX_LOCAL_DEVICE_IDS:-} ]]; then
  export CEL_JAX_LOCAL_DEVICE_IDS=${SLURM_LOCALID:?SLURM_LOCALID is not set}
fi
if [[ -n ${CEL_JAX_LOCAL_DEVICE_IDS:-} ]]; then names+=(CEL_JAX_LOCAL_DEVICE_IDS); fi
for n in "${names[@]}"; do
  printf '+ export %s\n' "$(quote "$n=${!n}")"
done
run_cmd "${CEL_JAX_BIN:-cel-jax}" "${ARGS[@]}"
