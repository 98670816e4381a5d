#!/usr/bin/env bash
# Full TOFU forget01/05/10 pipeline for SmolLM2-135M-Instruct in bf16 on one GPU, then the throughput
# benchmark in bf16 against PyTorch on the same GPU; results under results/gpu/ (or $OUT/ when set).
# Sized for about 10 minutes on one H100/H200 (one hard limit: GPU_CHECK_BUDGET_S, default 560 s).
#
#   pip install -e ".[cuda,test]"   # jax[cuda12] + torch for the throughput baseline
#   bash bench/gpu_check.sh
#
# Order (every stage is cached in $WORK; a rerun skips finished stages and resumes the rest):
#   1. python -m bench.tofu_full --splits forget01: target (fine-tune on `full`, the reference recipe),
#      retain99, full TOFU suite of both, PDU unlearning of forget01 (configs/tofu_smollm2.py) + its suite
#   2. python -m bench.throughput in bf16 on the GPU (ours vs transformers + torch AdamW, same GPU)
#   3. python -m bench.tofu_full --splits forget01,forget05,forget10 (forget01 is read back from the cache)
#      with a deadline: a stage that would start too late is listed as not run in the results
# The two benchmarks write their own results.{json,md}; bench/gpu_lease.sh is how we ran it on a leased
# machine without internet (wheels and the embedded model carried in). TOFU: the local folder of JSONL files
# in TOFU_DATA or CEL_JAX_TOFU_DIR; without one the TOFU stages read the hub (locuslab/TOFU), and the
# throughput benchmark, which needs the local files, fails.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
R=${OUT:-results/gpu}
W=${WORK:-runs/gpu}
DATA=${TOFU_DATA:-${CEL_JAX_TOFU_DIR:-}}
[ -n "$DATA" ] && [ -d "$DATA" ] || DATA=locuslab/TOFU  # online: the hub
BUDGET=${GPU_CHECK_BUDGET_S:-560}
# GPU_CHECK_SMOKE=1: the same plumbing on a CPU in a few minutes (tiny rows and shapes; MODEL= a folder)
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  TF=(--smoke --batch 4 --model "${MODEL:-smollm2-135m-instruct}")
  TP=(--device cpu --dtype bfloat16 --batch 1 --seq 128 --reps 1 --eval-items 2 --eval-reps 1 --max-new-tokens 4
    --no-fsdp --no-breakdown)
  WANT=cpu
else
  TF=(--model "${MODEL:-smollm2-135m-instruct}" --bucket 128)
  TP=(--device gpu --dtype bfloat16 --batch 16 --seq 256 --reps 5 --eval-items 40 --max-new-tokens 64
    --no-fsdp --no-all-rows)  # FSDP bytes: 8 fake CPU devices, measured by the CPU run
  WANT=gpu
fi
mkdir -p "$R" "$W"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export CEL_JAX_XLA_CACHE=${CEL_JAX_XLA_CACHE:-$W/xla}
T0=$SECONDS
left() { echo $((BUDGET - (SECONDS - T0))); }
stamp() { echo "[gpu_check +$((SECONDS - T0))s] $*" | tee -a "$R/log.txt"; }

WANT=$WANT python3 - <<'EOF' 2>&1 | tee "$R/env.txt" || exit 1
import os, jax, flax, optax, orbax.checkpoint as ocp, transformers
d = jax.devices()[0]
print("device", d.device_kind, "backend", jax.default_backend(), "count", jax.device_count())
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "orbax", ocp.__version__, "transformers", transformers.__version__)
assert d.platform == os.environ["WANT"], f"expected a {os.environ['WANT']} device, got {d}"
EOF

stamp "1. TOFU forget01 chain"
timeout "$(left)" python3 -m bench.tofu_full "${TF[@]}" --splits forget01 --data "$DATA" --workdir "$W/tofu" \
  --out "$R/tofu_full" 2>&1 | tee -a "$R/log.txt" | grep -v "^ *[0-9]*%|" | tail -n 60
stamp "forget01 chain exit ${PIPESTATUS[0]}"

if [ "$(left)" -gt 200 ] && [ "${GPU_CHECK_SKIP_THROUGHPUT:-0}" != 1 ]; then
  stamp "2. throughput (bf16, GPU)"
  # JAX and the torch worker share the GPU: no 90 % preallocation by JAX here
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout $(($(left) - 120)) python3 -m bench.throughput \
    "${TP[@]}" --data "$DATA" --out "$R" 2>&1 | tee -a "$R/log.txt" | tail -n 40
  stamp "throughput exit ${PIPESTATUS[0]}"
fi

# the rest of the splits, starting no stage in the last ~70 s of the budget
DL=$(python3 -c "print(max(0.0, ($(left) - 70) / 60))")
stamp "3. TOFU forget05 / forget10 (deadline ${DL} min)"
timeout "$(left)" python3 -m bench.tofu_full "${TF[@]}" --splits forget01,forget05,forget10 --data "$DATA" \
  --workdir "$W/tofu" --out "$R/tofu_full" --deadline-min "$DL" 2>&1 | tee -a "$R/log.txt" \
  | grep -v "^ *[0-9]*%|" | tail -n 80
stamp "all splits exit ${PIPESTATUS[0]}; results in $R"
