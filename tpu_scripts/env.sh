# shellcheck shell=bash
# Settings for every tpu_script; override any of them in the environment before calling a script, e.g.
#   export PROJECT=my-project ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-16 TPU_NAME=unlearn-8b BUCKET=my-bucket
# Sourced by the scripts (after common.sh), never executed.

: "${PROJECT:?set PROJECT to your Google Cloud project id}"
ZONE=${ZONE:-us-central2-b}                              # v4: us-central2-b; v5e: us-west4-a, us-central1-a ...
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}              # v4-32 = 16 chips on 4 hosts; v5litepod-16 = 16 chips, 4 hosts
TPU_NAME=${TPU_NAME:-cel-jax-${USER:-user}}               # the TPU VM (node) name
RUNTIME_VERSION=${RUNTIME_VERSION:-$(default_runtime "$ACCELERATOR_TYPE")}
BUCKET=${BUCKET:-}                                       # gs:// bucket name (no prefix) for work dirs and checkpoints
QUEUED=${QUEUED:-0}                                      # 1: create through a queued resource
QR_NAME=${QR_NAME:-$TPU_NAME-qr}                         # the queued resource's name
SPOT=${SPOT:-0}                                          # 1: spot (preemptible) capacity
VALID_UNTIL=${VALID_UNTIL:-}                             # queued resources only: e.g. 6h, give up after
CREATE_BUCKET=${CREATE_BUCKET:-0}                        # 1: create.sh also creates gs://$BUCKET
# Where the code comes from (same version on every worker):
REPO_URL=${REPO_URL:-}                                   # git URL: pip installs cel_jax[tpu] @ git+URL@CEL_JAX_REF
CEL_JAX_REF=${CEL_JAX_REF:-main}                         # a tag or commit sha (pin it: every worker gets the same)
CEL_JAX_VERSION=${CEL_JAX_VERSION:-}                     # without REPO_URL: a released version cel_jax[tpu]==X
#                                                          neither: copy this working tree to the workers (scp)
PYTHON_VERSION=${PYTHON_VERSION:-3.11}                   # TPU VM images ship 3.10; uv installs this one
EXTRA_PACKAGES=${EXTRA_PACKAGES:-gcsfs}                  # installed with cel_jax: gcsfs lets Orbax/epath use gs://
PIP_EXTRA_ARGS=${PIP_EXTRA_ARGS:-}                       # e.g. "-f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
CONFIG_DIR=${CONFIG_DIR:-$REPO_ROOT/configs}             # copied to ~/cel_jax/configs on every worker
COPY_DIRS=${COPY_DIRS:-}                                 # more local folders for ~/cel_jax/ (e.g. the TOFU JSONL)
PREFETCH_MODEL=${PREFETCH_MODEL:-}                       # hub model each worker downloads during setup
REMOTE_DIR=${REMOTE_DIR:-cel_jax}                        # on the workers, relative to $HOME: code and configs
VENV=${VENV:-cel_jax_venv}                               # on the workers, relative to $HOME
LOG_DIR=${LOG_DIR:-cel_jax_logs}                         # on the workers, relative to $HOME
# Local environment variables forwarded to the run (only those that are set):
PASS_ENV=${PASS_ENV:-XLA_FLAGS LIBTPU_INIT_ARGS JAX_TRACEBACK_FILTERING JAX_COMPILATION_CACHE_DIR HF_TOKEN HF_HUB_OFFLINE HF_HOME CEL_JAX_CACHE TPU_STDERR_LOG_LEVEL TPU_MIN_LOG_LEVEL}
RETRIES=${RETRIES:-3}                                    # attempts for each gcloud ssh/scp
SSH_EXTRA_ARGS=${SSH_EXTRA_ARGS:-}                       # e.g. --internal-ip or --tunnel-through-iap

[[ $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "TPU_NAME '$TPU_NAME' must be lowercase letters, digits and -"
NUM_HOSTS=$(tpu_hosts "$ACCELERATOR_TYPE")
export PROJECT ZONE ACCELERATOR_TYPE TPU_NAME RUNTIME_VERSION BUCKET NUM_HOSTS
