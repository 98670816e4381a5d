"""Decode-time matmul probes behind bench/README "Decoding" (fifth session).

  python -m bench.probes.decode_dots chain 8       # 30 SwiGLU blocks at batch 8: distinct vs repeated weights
  python -m bench.probes.decode_dots chain 50
  python -m bench.probes.decode_dots bandwidth     # GB/s of a jitted jnp.sum over 540 MB
  XLA_FLAGS=--xla_cpu_use_xnnpack=false python -m bench.probes.decode_dots greedy   # ms per generated token
  python -m bench.probes.decode_dots steps [MODEL]  # ms per decode step at batch 1..100 (sixth session)

`chain M`: 30 SwiGLU blocks (SmolLM2 shapes, random fp32 weights) on M rows, jitted: with 30 distinct weight
sets (streamed from memory) vs one set repeated (cache-resident), plus gate|up fused into one matmul.
`greedy`: the compiled greedy loop (`generate._greedy`) on the embedded SmolLM2 at batch 8 and 50, 64-token
prompts, 32 new tokens that never stop at EOS; run it under each XLA_FLAGS value to compare dot back ends.
`steps`: the cost of one decode step by batch size (48-token prompt bucket, no EOS), as the difference of
72 and 8 new tokens over 64 steps, best of 2: what `generate.SHRINK_SIZES` trades between.
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def _median_ms(fn, *args, reps: int = 7) -> float:
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def chain(M: int, L: int = 30) -> None:
    rng = np.random.RandomState(0)
    w = lambda *s: jnp.asarray(rng.randn(*s).astype(np.float32) * 0.02)  # noqa: E731
    Wg, Wu = [w(576, 1536) for _ in range(L)], [w(576, 1536) for _ in range(L)]
    Wd = [w(1536, 576) for _ in range(L)]
    Wgu = [jnp.concatenate([g, u], 1) for g, u in zip(Wg, Wu, strict=True)]
    x = jnp.asarray(rng.randn(M, 576).astype(np.float32))

    def blocks(x, Wg, Wu, Wd):
        for g, u, d in zip(Wg, Wu, Wd, strict=True):
            x = x + (jax.nn.silu(x @ g) * (x @ u)) @ d
        return x

    def fused(x, Wgu, Wd):
        for gu, d in zip(Wgu, Wd, strict=True):
            h = x @ gu
            x = x + (jax.nn.silu(h[:, :1536]) * h[:, 1536:]) @ d
        return x

    mb = L * 3 * 576 * 1536 * 4 / 1e6
    print(
        f"M={M}: distinct {_median_ms(blocks, x, Wg, Wu, Wd):.1f} ms, "
        f"same weights {_median_ms(blocks, x, Wg[:1] * L, Wu[:1] * L, Wd[:1] * L):.1f} ms, "
        f"gate|up fused {_median_ms(fused, x, Wgu, Wd):.1f} ms (weights {mb:.0f} MB)"
    )


def bandwidth() -> None:
    x = jnp.ones((135_000_000,), jnp.float32)
    print(f"jnp.sum over {x.nbytes / 1e6:.0f} MB: {x.nbytes / 1e6 / _median_ms(jnp.sum, x):.1f} GB/s")


def greedy() -> None:
    from cel_jax.evaluation import generate
    from cel_jax.model import hf_io

    model, _ = hf_io.load_pretrained("smollm2-135m-instruct", with_tokenizer=False)
    P, N = 64, 32
    eos = jnp.asarray([-5], jnp.int32)  # never generated: every step runs
    loop = functools.partial(generate._greedy, max_new_tokens=N)
    for B in (8, 50):
        ids = jnp.asarray(np.random.RandomState(0).randint(100, 4000, (B, P)), jnp.int32)
        ms = _median_ms(loop, model, ids, jnp.ones((B, P), jnp.int32), eos, reps=3)
        print(f"B={B}: {ms / N:.1f} ms per generated token (prefill included)")


def steps(model_path: str = "smollm2-135m-instruct") -> None:
    from cel_jax.evaluation import generate
    from cel_jax.model import hf_io

    model, _ = hf_io.load_pretrained(model_path, with_tokenizer=False)
    rng = np.random.default_rng(0)

    def best_s(B: int, N: int) -> float:
        prompts = [list(rng.integers(100, 40000, 40)) for _ in range(B)]
        kw = dict(eos_ids=[], pad_id=0, max_new_tokens=N, batch_size=B)
        generate.greedy_generate(model, prompts, **kw)  # compile
        ts = []
        for _ in range(2):
            t = time.perf_counter()
            generate.greedy_generate(model, prompts, **kw)
            ts.append(time.perf_counter() - t)
        return min(ts)

    for B in (1, 4, 8, 16, 32, 50, 100):
        ms = 1000 * (best_s(B, 72) - best_s(B, 8)) / 64
        print(f"B={B:4d} per-step {ms:7.1f} ms  per-row-step {ms / B:6.2f} ms")


if __name__ == "__main__":
    {
        "chain": lambda: chain(int(sys.argv[2])),
        "bandwidth": bandwidth,
        "greedy": greedy,
        "steps": lambda: steps(*sys.argv[2:3]),
    }[sys.argv[1]]()
