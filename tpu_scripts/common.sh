# shellcheck shell=bash
# Helpers shared by the tpu_scripts (sourced, never executed): flag parsing, quoting, and `run_cmd`, which
# prints every command before running it and only prints it under --dry-run (or DRY_RUN=1).

set -euo pipefail
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "error: tpu_scripts need bash >= 4.4 (this is $BASH_VERSION; on macOS: brew install bash)" >&2
  exit 1
fi

TPU_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034  # used by env.sh and setup.sh
REPO_ROOT=$(cd "$TPU_SCRIPTS_DIR/.." && pwd)
DRY_RUN=${DRY_RUN:-0}
ARGS=()

die() {
  echo "error: $*" >&2
  exit 1
}

# usage: print the comment block at the top of the calling script (after the shebang).
usage() {
  sed -n '2,/^[^#]/{/^# shellcheck/d;/^#/s/^# \{0,1\}//p}' "$0"
}

# parse_flags "$@": removes --dry-run/-n and --help/-h, leaves the rest in ARGS.
parse_flags() {
  ARGS=()
  local a
  for a in "$@"; do
    case $a in
      --dry-run | -n) DRY_RUN=1 ;;
      --help | -h)
        usage
        exit 0
        ;;
      *) ARGS+=("$a") ;;
    esac
  done
}

# quote WORD: WORD as one shell word: unchanged when it is safe, else in single quotes, or in double quotes
# when it holds single quotes but nothing a double-quoted string would expand.
quote() {
  local s=$1 sq="'"
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  elif [[ $s != *"$sq"* ]]; then
    printf "'%s'" "$s"
  elif [[ $s != *[\$\`\"\\!]* ]]; then
    printf '"%s"' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# join_quoted WORD...: the words quoted and joined by spaces (a command line for a remote shell).
join_quoted() {
  local out=() a
  for a in "$@"; do out+=("$(quote "$a")"); done
  printf '%s' "${out[*]}"
}

# run_cmd CMD ARG...: print "+ CMD ARG..." (re-usable shell syntax), then run it unless DRY_RUN=1.
run_cmd() {
  printf '+ %s\n' "$(join_quoted "$@")"
  if [[ $DRY_RUN == 1 ]]; then
    return 0
  fi
  "$@"
}

# run_retry CMD ARG...: run_cmd with up to $RETRIES attempts (gcloud ssh to many workers can flake).
run_retry() {
  local i
  for ((i = 1; i <= RETRIES; i++)); do
    if run_cmd "$@"; then
      return 0
    fi
    echo "attempt $i/$RETRIES failed" >&2
    sleep "$((i * 5))"
  done
  die "giving up after $RETRIES attempts: $1 ..."
}

# pass_env_exports [NAME=VALUE...]: "export ..." for the given assignments plus the variables named in
# PASS_ENV that are set here, quoted for the worker's shell.
pass_env_exports() {
  local exports=("$@") name
  for name in $PASS_ENV; do
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "PASS_ENV entry '$name' is not a variable name"
    if [[ -n ${!name+x} ]]; then exports+=("$name=${!name}"); fi
  done
  if ((${#exports[@]} == 0)); then
    printf ':'
  else
    printf 'export %s' "$(join_quoted "${exports[@]}")"
  fi
}

# The gcloud flags every TPU command needs.
gcloud_loc() {
  printf '%s\n' "--project=$PROJECT" "--zone=$ZONE"
}

# tpu_ssh WORKER REMOTE_COMMAND: run REMOTE_COMMAND on WORKER (a number or "all": the same command on
# every host of the slice, at once).
tpu_ssh() {
  local loc
  mapfile -t loc < <(gcloud_loc)
  local extra=()
  read -ra extra <<<"${SSH_EXTRA_ARGS:-}"
  run_retry gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${loc[@]}" "--worker=$1" "--command=$2" "${extra[@]}"
}

# tpu_scp LOCAL... REMOTE_PATH: copy files to every worker.
tpu_scp() {
  local loc
  mapfile -t loc < <(gcloud_loc)
  local extra=()
  read -ra extra <<<"${SSH_EXTRA_ARGS:-}"
  local dest=${*: -1}
  run_retry gcloud compute tpus tpu-vm scp --recurse "${@:1:$#-1}" "$TPU_NAME:$dest" "${loc[@]}" --worker=all \
    "${extra[@]}"
}

# tpu_hosts ACCELERATOR_TYPE: number of VMs of a slice (same rule as cel_jax.scale.distributed.tpu_hosts).
# v2/v3/v4/v5p names count TensorCores (8 per host); v5e (v5litepod) and v6e count chips (<= 8: one host,
# beyond that 4 chips per host).
tpu_hosts() {
  local re='^v([0-9]+)(p|e|lite|litepod)?-([0-9]+)$'
  [[ $1 =~ $re ]] || die "unrecognised ACCELERATOR_TYPE '$1' (expected e.g. v4-32, v5litepod-16, v5p-64)"
  local gen=${BASH_REMATCH[1]} kind=${BASH_REMATCH[2]} n=${BASH_REMATCH[3]}
  case $kind in
    e | lite | litepod)
      ((gen >= 5)) || die "unrecognised ACCELERATOR_TYPE '$1'"
      if ((n <= 8)); then echo 1; else echo $((n / 4)); fi
      ;;
    *)
      if ((gen >= 5)) && [[ $kind != p ]]; then die "unrecognised ACCELERATOR_TYPE '$1'"; fi
      if ((n <= 8)); then echo 1; else echo $((n / 8)); fi
      ;;
  esac
}

# default_runtime ACCELERATOR_TYPE: the TPU VM software version that goes with a TPU generation.
default_runtime() {
  case $1 in
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}
