#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stream the log of the current run (worker 0 by default; process 0 writes the metrics).
#   logs.sh [--dry-run] [--worker=N|all] [--lines=N] [--no-follow]
# RUN_NAME picks an older run's log instead of latest.log.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
# shellcheck source=env.sh
source "$TPU_SCRIPTS_DIR/env.sh"
worker=0 lines=200 follow=-F
for a in "${ARGS[@]}"; do
  case $a in
    --worker=*) worker=${a#--worker=} ;;
    --lines=*) lines=${a#--lines=} ;;
    --no-follow) follow="" ;;
    *) die "unknown argument '$a'" ;;
  esac
done
[[ $worker == all || $worker =~ ^[0-9]+$ ]] || die "--worker must be a number or all"
[[ $lines =~ ^[0-9]+$ ]] || die "--lines must be a number"
# shellcheck disable=SC2088  # ~ expands on the worker
file="~/$LOG_DIR/${RUN_NAME:-latest}.log"
tpu_ssh "$worker" "tail -n $lines ${follow:+$follow }$file"
