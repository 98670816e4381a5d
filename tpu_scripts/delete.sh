#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Delete the TPU VM / slice (and its queued resource). Asks for confirmation unless --yes.
#   delete.sh [--dry-run] [--yes]
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
# shellcheck source=env.sh
source "$TPU_SCRIPTS_DIR/env.sh"
mapfile -t loc < <(gcloud_loc)
yes=()
for a in "${ARGS[@]}"; do
  case $a in
    --yes | -y) yes=(--quiet) ;;
    *) die "unknown argument '$a'" ;;
  esac
done
if [[ $QUEUED == 1 ]]; then
  run_cmd gcloud compute tpus queued-resources delete "$QR_NAME" "${loc[@]}" --force "${yes[@]}"
else
  run_cmd gcloud compute tpus tpu-vm delete "$TPU_NAME" "${loc[@]}" "${yes[@]}"
fi
