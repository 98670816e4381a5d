#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Create the TPU VM / pod slice (and optionally the gs:// bucket).
#   create.sh [--dry-run]
# Settings (env.sh): PROJECT, ZONE, ACCELERATOR_TYPE, TPU_NAME, RUNTIME_VERSION, SPOT=1, QUEUED=1 (+ QR_NAME,
# VALID_UNTIL), CREATE_BUCKET=1 with BUCKET, CREATE_EXTRA_ARGS (e.g. "--network=my-net").
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
# shellcheck source=env.sh
source "$TPU_SCRIPTS_DIR/env.sh"
((${#ARGS[@]} == 0)) || die "create.sh takes no arguments besides --dry-run (got: ${ARGS[*]})"

mapfile -t loc < <(gcloud_loc)
extra=()
read -ra extra <<<"${CREATE_EXTRA_ARGS:-}"
if [[ $SPOT == 1 ]]; then extra+=(--spot); fi

if [[ $CREATE_BUCKET == 1 ]]; then
  [[ -n $BUCKET ]] || die "CREATE_BUCKET=1 needs BUCKET"
  run_cmd gcloud storage buckets create "gs://$BUCKET" "--project=$PROJECT" "--location=${ZONE%-*}" \
    --uniform-bucket-level-access
fi

if [[ $QUEUED == 1 ]]; then
  if [[ -n $VALID_UNTIL ]]; then extra+=("--valid-until-duration=$VALID_UNTIL"); fi
  run_cmd gcloud compute tpus queued-resources create "$QR_NAME" "--node-id=$TPU_NAME" "${loc[@]}" \
    "--accelerator-type=$ACCELERATOR_TYPE" "--runtime-version=$RUNTIME_VERSION" "${extra[@]}"
  echo "# queued; the slice exists once this says ACTIVE:"
  echo "#   gcloud compute tpus queued-resources describe $QR_NAME --project=$PROJECT --zone=$ZONE"
else
  run_cmd gcloud compute tpus tpu-vm create "$TPU_NAME" "${loc[@]}" \
    "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION" "${extra[@]}"
fi
echo "# $TPU_NAME: $ACCELERATOR_TYPE, $NUM_HOSTS host(s); next: tpu_scripts/setup.sh"
