"""`python -m bench.throughput`: our PDU step, GradDiff step and TOFU eval against PyTorch/transformers,
side by side in one run on this machine (interleaved repetitions, medians), plus FSDP bytes per device.

Axes: M micro-batches, B rows per micro-batch (forget or retain), T padded length, D model, V vocab,
L layers, N parameters.

Measured (see bench/README.md, section "throughput"):
  (1) tokens/s of our jitted PDU step (unlearning.step.train_step, method pdu, solver primal_dual) vs a
      PyTorch step with the same Lagrangian on transformers' LlamaForCausalLM + torch.optim.AdamW;
  (2) PDU step time / GradDiff (scalarised) step time, same shapes;
  (3) model FLOP/s of our step, 6·N·tokens + 12·L·T·(n_heads·head_dim)·tokens, over a jitted
      jnp.matmul peak in the compute dtype, on the same device, measured in the same run;
  (4) TOFU eval: probabilities forward + greedy generation, ours vs transformers forward / `generate`,
      with the agreement of the generated token ids;
  (5) peak host memory (peak RSS, VmHWM) of each side: the PyTorch side runs in its own process;
  (6) parameter bytes per device, FSDP mesh (1, 8, 1) vs replicated, on 8 fake CPU devices (subprocess).
Only numpy and the standard library are imported at module level, so the PyTorch worker never loads JAX
and the FSDP subprocess never loads torch.

`--device {auto,cpu,gpu}` (auto: the GPU when JAX's default backend is one) and `--dtype {float32,bfloat16}`
(float32: everything fp32 on both sides; bfloat16: each side's standard mixed precision, fp32 master weights
and AdamW, bf16 matmuls, fp32 losses; see `precision_recipe`). The device is decided in the parent; the
PyTorch worker gets the torch device string ("cuda" or "cpu"). CPU-only phases (the OpenMP wait-policy
comparison, torch thread settings) are skipped on a GPU with the reason recorded in the results.

Modules: common (helpers), device (device, dtype, parity, machine), workload (batches, FLOPs, agreement),
jax_step (our jitted step: make_jax_step), jax_measure (our peak, breakdown, loss head, eval), torch_reference
(the PyTorch reference), torch_worker (its process), phase_steps and phase_eval (the phases), fsdp (6),
runner (the whole run), report (Markdown and JSON), cli (flags) and __main__ (`python -m bench.throughput`).
"""
