#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Install cel_jax[tpu] (one version) and the configs on every worker of the slice.
#   setup.sh [--dry-run]
# Code source, first that is set: REPO_URL (+ CEL_JAX_REF, a tag or commit), CEL_JAX_VERSION (a release),
# else this working tree, copied with scp. Python: uv creates ~/$VENV with Python $PYTHON_VERSION.
# configs/ ($CONFIG_DIR) is copied to ~/$REMOTE_DIR/configs, so run.sh can pass --config=configs/....py;
# COPY_DIRS (local folders, e.g. data) go next to it; PREFETCH_MODEL is downloaded into each worker's hub cache.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
# shellcheck source=env.sh
source "$TPU_SCRIPTS_DIR/env.sh"
((${#ARGS[@]} == 0)) || die "setup.sh takes no arguments besides --dry-run (got: ${ARGS[*]})"

if [[ -n $REPO_URL ]]; then
  spec="cel_jax[tpu] @ git+$REPO_URL@$CEL_JAX_REF"
elif [[ -n $CEL_JAX_VERSION ]]; then
  spec="cel_jax[tpu]==$CEL_JAX_VERSION"
else
  spec="cel_jax[tpu] @ file://\$HOME/$REMOTE_DIR"
  tarball=${TMPDIR:-/tmp}/cel_jax_src_$TPU_NAME.tgz
  run_cmd tar -czf "$tarball" -C "$REPO_ROOT" --exclude=./.git --exclude=./.venv --exclude=__pycache__ \
    --exclude=./results --exclude=./notebooks --exclude='*.egg-info' .
  tpu_scp "$tarball" cel_jax_src.tgz
  tpu_ssh all "rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/cel_jax_src.tgz -C ~/$REMOTE_DIR"
fi

# The package spec goes inside double quotes on the worker, so $HOME expands there, not here; the ~ paths
# are meant for the worker's shell too.
# shellcheck disable=SC2088
uv='~/.local/bin/uv'
# shellcheck disable=SC2088
py="~/$VENV/bin/python"
install="python3 -m pip install --user -q --upgrade uv"
install+=" && ($py -V || $uv venv --python $PYTHON_VERSION ~/$VENV)"
install+=" && $uv pip install --python $py ${PIP_EXTRA_ARGS:+$PIP_EXTRA_ARGS }\"$spec\"${EXTRA_PACKAGES:+ $EXTRA_PACKAGES}"
install+=" && mkdir -p ~/$REMOTE_DIR ~/$LOG_DIR"
tpu_ssh all "$install"
if [[ -n $REPO_URL || -n $CEL_JAX_VERSION ]]; then  # else the configs came with the working tree
  [[ -d $CONFIG_DIR ]] || die "CONFIG_DIR $CONFIG_DIR does not exist"
  tpu_scp "$CONFIG_DIR" "$REMOTE_DIR/"
fi
for d in $COPY_DIRS; do
  [[ -d $d ]] || die "COPY_DIRS entry $d is not a folder"
  tpu_scp "$d" "$REMOTE_DIR/"
done
if [[ -n $PREFETCH_MODEL ]]; then  # the hub cache of every worker; gated models need HF_TOKEN in PASS_ENV
  fetch="from huggingface_hub import snapshot_download as s; print(s('$PREFETCH_MODEL', allow_patterns=["
  fetch+="'*.json', '*.safetensors', '*.model', '*.txt', '*.jinja']))"
  tpu_ssh all "$(pass_env_exports HF_HUB_ENABLE_HF_TRANSFER=0) && $py -c \"$fetch\""
fi
# Every worker prints its versions and a hash of its installed packages: the lines must agree.
versions='import importlib.metadata as m; print("cel_jax", m.version("cel_jax"), "jax", m.version("jax"))'
# shellcheck disable=SC2016
tpu_ssh all 'echo "$(hostname) packages $('"$uv pip freeze --python $py"' | sha256sum | cut -c1-16)" && '"$py -c '$versions'"
