#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR disable=SC2016,SC2088  # $vars and ~ are for the worker's shell
# Stop the running cel-jax job on every worker (SIGTERM to its process group, SIGKILL after 30 s) and free
# the TPU (libtpu lock file). The VMs keep running (and billing): delete.sh removes them.
#   stop.sh [--dry-run]
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
# shellcheck source=env.sh
source "$TPU_SCRIPTS_DIR/env.sh"
((${#ARGS[@]} == 0)) || die "stop.sh takes no arguments besides --dry-run (got: ${ARGS[*]})"
pidfile="~/$LOG_DIR/run.pid"
remote='if [ -f '"$pidfile"' ]; then pid=$(cat '"$pidfile"'); kill -TERM -- -$pid 2>/dev/null || true;'
remote+=' for i in $(seq 30); do kill -0 -- -$pid 2>/dev/null || break; sleep 1; done;'
remote+=' kill -KILL -- -$pid 2>/dev/null || true; rm -f '"$pidfile"'; fi;'
remote+=' sudo rm -f /tmp/libtpu_lockfile; echo "$(hostname): stopped"'
tpu_ssh all "$remote"
