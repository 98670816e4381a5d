#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Launch a cel-jax command on every worker at once (gcloud ... ssh --worker=all), in the background.
#   run.sh [--dry-run] unlearn|finetune|eval --config=configs/X.py [--workdir=gs://...] [--config.key=value ...]
# The same command line runs on every host; JAX's multi-controller runtime joins them into one program
# (CEL_JAX_DISTRIBUTED=auto on multi-host slices). Without --workdir: gs://$BUCKET/cel_jax/$RUN_NAME.
# Forwards the local variables named in PASS_ENV that are set. Output: ~/$LOG_DIR/$RUN_NAME.log on each
# worker (latest.log points to it); follow it with logs.sh, stop it with stop.sh.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
# shellcheck source=env.sh
source "$TPU_SCRIPTS_DIR/env.sh"
RUN_NAME=${RUN_NAME:-$(date +%Y%m%d-%H%M%S)}
[[ $RUN_NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "RUN_NAME '$RUN_NAME' may only hold letters, digits, . _ -"

((${#ARGS[@]} >= 1)) || die "usage: run.sh [--dry-run] unlearn|finetune|eval --config=configs/X.py [flags]"
cmd=${ARGS[0]}
case $cmd in
  unlearn | finetune | eval) ;;
  *) die "unknown command '$cmd': use unlearn, finetune or eval" ;;
esac
flags=("${ARGS[@]:1}")
have_config=0 workdir=""
for f in "${flags[@]}"; do
  case $f in
    --config=*) have_config=1 ;;
    --workdir=*) workdir=${f#--workdir=} ;;
  esac
done
((have_config)) || die "run.sh $cmd needs --config=configs/....py (a path under ~/$REMOTE_DIR on the workers)"
if [[ -z $workdir ]]; then
  [[ -n $BUCKET ]] || die "give --workdir=gs://... or set BUCKET"
  workdir=gs://$BUCKET/cel_jax/$RUN_NAME
  flags+=("--workdir=$workdir")
fi
if ((NUM_HOSTS > 1)) && [[ $workdir != gs://* ]]; then
  die "$ACCELERATOR_TYPE has $NUM_HOSTS hosts: the workdir must be shared, use gs://... (got $workdir)"
fi

exports=("PYTHONUNBUFFERED=1")
if ((NUM_HOSTS > 1)); then exports+=("CEL_JAX_DISTRIBUTED=auto"); fi

# shellcheck disable=SC2088  # ~ expands on the worker
log="~/$LOG_DIR/$RUN_NAME.log"
remote="mkdir -p ~/$LOG_DIR && cd ~/$REMOTE_DIR && $(pass_env_exports "${exports[@]}")"
remote+=" && (setsid nohup ~/$VENV/bin/cel-jax $(join_quoted "$cmd" "${flags[@]}") > $log 2>&1 < /dev/null &"
# shellcheck disable=SC2016
remote+=' echo $! > ~/'"$LOG_DIR/run.pid)"
remote+=" && ln -sfn $RUN_NAME.log ~/$LOG_DIR/latest.log && echo \"\$(hostname): started $RUN_NAME\""
tpu_ssh all "$remote"
echo "# logs: tpu_scripts/logs.sh   stop: tpu_scripts/stop.sh   workdir: $workdir"
