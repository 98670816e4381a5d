#!/usr/bin/env bash
# Full TOFU forget01/05/10 pipeline for SmolLM2-135M-Instruct in bf16 on one GPU, then the throughput
# benchmark; results under results/gpu/ (or $OUT/ when set). Sized for about 10 minutes on one H100/H200.
#
#   pip install -e ".[cuda,test]"   # jax[cuda12] + torch for the throughput baseline
#   bash bench/gpu_check.sh
#
# Stages (each a cel-jax command; a rerun resumes or skips finished stages):
#   target   fine-tune on TOFU `full` (4000 QA, 5 epochs, lr 1e-5 as the reference recipe, batch 32)
#   retain   the same recipe on retain99 / retain95 / retain90 (the reference models of forget quality)
#   eval     the full TOFU suite of every retain model and of the target, per split
#   pdu      PDU unlearning of forget01 / 05 / 10 from the target (configs/tofu_smollm2.py, bf16 compute),
#            then the full TOFU suite with the matching retain model's logs.
# Status: written and checked for syntax (bash -n, shellcheck) on the CPU machine only. This session was
# not lent a GPU, so the script has not been run and no GPU results are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${OUT:-results/gpu}
W=${WORK:-runs/gpu}
DATA=${TOFU_DATA:-../shared/data/tofu}
[ -d "$DATA" ] || DATA=locuslab/TOFU
mkdir -p "$R" "$W"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
python -c 'import jax; d = jax.devices()[0]; assert d.platform == "gpu", d; print(d.device_kind)' | tee "$R/device.txt"

BF16=(--config.model.dtype=bfloat16 --config.data.source="$DATA" --config.ckpt.every=1000)
step() {  # step NAME CMD...: run unless NAME is done
  local name=$1; shift
  if [ -f "$W/$name.done" ]; then echo "skip $name"; return; fi
  local t0=$SECONDS
  "$@"
  echo "$name $((SECONDS - t0))" >> "$R/times.txt"
  touch "$W/$name.done"
}

step target cel-jax finetune --config=configs/tofu_smollm2_finetune.py "${BF16[@]}" \
  --config.data.train_split=full --config.batch_size=32 --config.grad_accum=1 --workdir="$W/target"
for s in 01 05 10; do
  r=$((100 - 10#$s))
  step "retain$r" cel-jax finetune --config=configs/tofu_smollm2_finetune.py "${BF16[@]}" \
    --config.data.train_split="retain$r" --config.batch_size=32 --config.grad_accum=1 --workdir="$W/retain$r"
  step "eval_retain$r" cel-jax eval --config=configs/eval/tofu.py --config.model="$W/retain$r/model" \
    --config.data_dir="$DATA" --config.forget_split="forget$s" --config.dtype=bfloat16 \
    --config.generation_batch_size=256 --config.batch_size=128 --workdir="$R/forget$s/retain"
  step "eval_target$s" cel-jax eval --config=configs/eval/tofu.py --config.model="$W/target/model" \
    --config.data_dir="$DATA" --config.forget_split="forget$s" --config.dtype=bfloat16 \
    --config.generation_batch_size=256 --config.batch_size=128 \
    --config.retain_logs_path="$R/forget$s/retain/TOFU_EVAL.json" --workdir="$R/forget$s/target"
  step "pdu$s" cel-jax unlearn --config="configs/tofu_smollm2.py:forget$s" "${BF16[@]}" \
    --config.model.name_or_path="$W/target/model" --workdir="$W/pdu$s" \
    --config.eval.enabled=True --config.eval.overrides.data_dir="$DATA" \
    --config.eval.overrides.retain_logs_path="$R/forget$s/retain/TOFU_EVAL.json"
  cp "$W/pdu$s/eval/TOFU_SUMMARY.json" "$R/forget$s/pdu_TOFU_SUMMARY.json"
done
step throughput python -m bench.throughput --out "$R"  # fp32 on both sides (the bench has no bf16 mode yet)
echo "done: $R"
