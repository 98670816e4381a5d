"""Measurements of our side besides the step itself: the matmul peak, the step's forward / optimizer
breakdown, the PDU vs GradDiff loss-head differential, and the TOFU eval's forward and generation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.throughput.common import IGNORE, median, rotate, timed
from bench.throughput.jax_step import jnp_copy


def jax_matmul_peak(
    sizes: Sequence[int] = (1024, 2048), reps: int = 3, dtype: str = "float32", inner: int = 1
) -> dict:
    """Best GFLOP/s of a jitted square jnp.matmul in `dtype` on JAX's default device, per size; `peak` is
    the best over sizes. One timing = `inner` matmuls dispatched back to back, then waited for."""
    import jax
    import jax.numpy as jnp

    f = jax.jit(jnp.matmul)
    dt = jnp.dtype(dtype)
    out = {}
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), dt)
        b = jax.random.normal(jax.random.key(1), (n, n), dt)
        f(a, b).block_until_ready()

        def once(a=a, b=b):
            for _ in range(inner - 1):
                f(a, b)
            return f(a, b).block_until_ready()  # one stream: the last one ends after all the others

        best = min(timed(once)[1] for _ in range(reps))
        out[str(n)] = 2 * n**3 * inner / best / 1e9
        del a, b
    return {"gflops": out, "peak": max(out.values()), "dtype": dtype, "inner": inner}


def jax_breakdown(st: dict, batch: dict, reps: int) -> dict:
    """Forward only (the objective of micro-batch 0, no gradient) and optimizer only (optax update +
    apply_updates on gradient-shaped arrays), each jitted separately; backward ≈ step - the two."""
    import jax
    import optax

    from cel_jax.unlearning import answer_rows
    from cel_jax.unlearning import step as step_lib

    spec, graphdef, tx = st["spec"], st["graphdef"], st["tx"]
    mb = jax.device_put(jax.tree.map(lambda x: x[0], batch))
    mb = answer_rows.compact_batch(mb, spec.answer_rows)  # as train_step does per micro-batch
    s = st["state"]
    fwd = jax.jit(lambda p, mb, lam, eps: step_lib.objective(p, lam, eps, mb, {}, {}, graphdef, spec)[0])

    def opt_fn(g, o, p):
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    # donated, as in the step (the train state is donated): the update runs in place, like torch's AdamW
    opt = jax.jit(opt_fn, donate_argnums=(1, 2))
    out: dict[str, Any] = {}
    _, out["forward_first_call_s"] = timed(lambda: fwd(s.params, mb, s.dual.lam, s.eps).block_until_ready())
    # steady state, as in training: one copy of the state, then each update consumes the previous one's
    # outputs (timing fresh copies each time also timed their new allocations: ~1.3 s vs ~0.7 s here)
    o, p = jax.block_until_ready((jax.tree.map(jnp_copy, s.opt_state), jax.tree.map(jnp_copy, s.params)))
    (p, o), out["optimizer_first_call_s"] = timed(lambda: jax.block_until_ready(opt(s.params, o, p)))
    f_t, o_t = [], []
    for _ in range(reps):
        f_t.append(timed(lambda: fwd(s.params, mb, s.dual.lam, s.eps).block_until_ready())[1])
        (p, o), t = timed(lambda o=o, p=p: jax.block_until_ready(opt(s.params, o, p)))
        o_t.append(t)
    out["forward_s"], out["optimizer_s"] = median(f_t), median(o_t)
    return out


def loss_head_times(batch: int, seq_len: int, vocab: int, reps: int = 5) -> dict:
    """Value and gradient w.r.t. [B, T, V] logits of the forget term alone, PDU's logit margin vs GradDiff's
    negated CE (unlearning.methods.forget_loss), jitted, interleaved: the only work in which the two steps
    differ (both have the same retain CE and the same model). Medians in seconds."""
    import jax
    import jax.numpy as jnp

    from cel_jax.unlearning import methods

    k1, k2 = jax.random.split(jax.random.key(0))
    logits_BTV = 3.0 * jax.random.normal(k1, (batch, seq_len, vocab), jnp.float32)
    labels_BT = jax.random.randint(k2, (batch, seq_len), 0, vocab)
    labels_BT = labels_BT.at[:, : seq_len // 2].set(IGNORE)

    def head(name):
        loss = lambda z: methods.forget_loss(name, {"forget_logits": z, "forget_labels": labels_BT})[0]
        return jax.jit(jax.value_and_grad(loss))

    fns = {"pdu": head("pdu"), "grad_diff": head("grad_diff")}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        jax.block_until_ready(f(logits_BTV))
    for r in range(reps):
        for k in rotate(list(fns), r):
            times[k].append(timed(lambda k=k: jax.block_until_ready(fns[k](logits_BTV)))[1])
    out = {f"{k}_s": median(v) for k, v in times.items()}
    out["delta_s"] = out["pdu_s"] - out["grad_diff_s"]
    return out


def jax_eval(model, items, prompts, pad_id: int, eos_ids, max_new_tokens: int) -> dict:
    """The evaluation's own paths: forward.item_stats (probabilities) and batched_generation.generate_ids."""
    from cel_jax.evaluation import batched_generation, forward

    n = len(items)
    stats, t_f = timed(lambda: forward.item_stats(model, items, pad_id, batch_size=n, progress=False))
    outs, t_g = timed(
        lambda: batched_generation.generate_ids(
            model,
            prompts,
            eos_ids=eos_ids,
            pad_id=pad_id,
            max_new_tokens=max_new_tokens,
            batch_size=n,
            progress=False,
        )
    )
    return {"forward_s": t_f, "generate_s": t_g, "avg_loss": [s["avg_loss"] for s in stats], "ids": outs}
