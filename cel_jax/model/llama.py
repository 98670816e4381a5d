"""Flax NNX Llama (Llama-2/3, SmolLM2, Mistral-style, Qwen2-style) in Hugging Face tensor layout.

Axes: B batch, T query length, S key length (cache slots), D model, N q-heads, K kv-heads, G = N/K,
H head_dim, F mlp, V vocab.
Every parameter carries `logical_axes` metadata; `cel_jax.scale.sharding` maps them onto a device mesh.
Every parameter use is marked with `taps.tap` (an identity in the program) for ghost norms.
Norms, RoPE angles, softmax and logits are float32; matmuls run in `cfg.dtype`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cel_jax.model.config import LlamaConfig, rope_inv_freq
from cel_jax.model.taps import tap

NEG_INF = -1e30  # finite, so rows with every key masked give a uniform (unused) softmax, never NaN
Cache = list[dict[str, jax.Array]]


def _acc(dtype) -> jnp.dtype:
    """Accumulation dtype: float32, or float64 when the model runs in float64 (parity checks)."""
    return jnp.promote_types(dtype, jnp.float32)


def _param(rngs: nnx.Rngs, shape, axes, dtype, scale=0.02, zeros=False):
    init = jnp.zeros(shape, dtype) if zeros else scale * jax.random.normal(rngs.params(), shape, dtype)
    return nnx.Param(init, logical_axes=axes)


# One decoded token (T = 1) attends as multiply-and-reduce over the head-major cache instead of two
# batched einsums: on XLA:CPU the einsums lower to B*K tiny [G, H] x [H, S] matrix products (0.30 s vs
# 0.18 s for 30 layers at B 50, S 328); same math, fp32 accumulation. "auto": reduce on the CPU, einsum
# elsewhere (what the GPU results were measured with); "reduce" / "einsum" force one.
DECODE_ATTENTION = "auto"


def _decode_reduce() -> bool:
    if DECODE_ATTENTION == "auto":
        return jax.default_backend() == "cpu"
    return DECODE_ATTENTION == "reduce"


def _decode_attention(q_B1KGH, k_BKSH, v_BKSH, mask_B1S, dt):
    """softmax(q k^T / sqrt(H)) v for one query position; returns [B, 1, K, G, H]."""
    acc = _acc(dt)
    q_BKGH = q_B1KGH[:, 0].astype(acc)
    H = q_BKGH.shape[-1]
    scores_BKGS = jnp.sum(q_BKGH[:, :, :, None, :] * k_BKSH[:, :, None].astype(acc), axis=-1) * (H**-0.5)
    scores_BKGS = jnp.where(mask_B1S[:, None, :, :], scores_BKGS, NEG_INF)
    probs_BKGS = jax.nn.softmax(scores_BKGS, axis=-1).astype(dt)
    out_BKGH = jnp.sum(probs_BKGS[..., None].astype(acc) * v_BKSH[:, :, None].astype(acc), axis=-2)
    return out_BKGH.astype(dt)[:, None]


class RMSNorm(nnx.Module):
    def __init__(self, d: int, eps: float, dtype):
        self.scale = nnx.Param(jnp.ones((d,), dtype), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        acc = _acc(x_BTD.dtype)
        x = x_BTD.astype(acc)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return tap("scale", x, self.scale[...].astype(acc) * x)


def rope_cos_sin(positions_BT: jax.Array, inv_freq_h: jax.Array):
    """cos/sin [B, T, H] in float32 for rotate-half RoPE (HF layout: angles repeated twice)."""
    ang = positions_BT.astype(jnp.float32)[..., None] * inv_freq_h[None, None, :]
    ang = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x_BTnH: jax.Array, cos_BTH: jax.Array, sin_BTH: jax.Array) -> jax.Array:
    x = x_BTnH.astype(_acc(x_BTnH.dtype))
    h = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)
    cos, sin = cos_BTH.astype(x.dtype)[:, :, None, :], sin_BTH.astype(x.dtype)[:, :, None, :]
    out = x * cos + rot * sin
    return out.astype(x_BTnH.dtype)


class Attention(nnx.Module):
    def __init__(self, c: LlamaConfig, rngs: nnx.Rngs):
        pd = jnp.dtype(c.param_dtype)
        D, N, K, H = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
        self.q = _param(rngs, (D, N, H), ("embed", "q_heads", "head_dim"), pd)
        self.k = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), pd)
        self.v = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), pd)
        self.o = _param(rngs, (N, H, D), ("q_heads", "head_dim", "embed"), pd)
        if c.attention_bias:
            self.q_bias = _param(rngs, (N, H), ("q_heads", "head_dim"), pd, zeros=True)
            self.k_bias = _param(rngs, (K, H), ("kv_heads", "head_dim"), pd, zeros=True)
            self.v_bias = _param(rngs, (K, H), ("kv_heads", "head_dim"), pd, zeros=True)
        if c.o_bias:
            self.o_bias = _param(rngs, (D,), ("norm",), pd, zeros=True)
        self.c = c

    def __call__(self, x_BTD, cos_BTH, sin_BTH, mask_BTS, cache: dict | None = None, index=None):
        c, dt = self.c, jnp.dtype(self.c.dtype)
        x = x_BTD.astype(dt)
        q = jnp.einsum("BTD,DNH->BTNH", x, self.q[...].astype(dt))
        k = jnp.einsum("BTD,DKH->BTKH", x, self.k[...].astype(dt))
        v = jnp.einsum("BTD,DKH->BTKH", x, self.v[...].astype(dt))
        if c.attention_bias:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        q, k, v = (tap("dense", x, t, c.attention_bias) for t in (q, k, v))
        q, k = apply_rope(q, cos_BTH, sin_BTH), apply_rope(k, cos_BTH, sin_BTH)
        B, T, N, H = q.shape
        K = k.shape[2]
        q = q.reshape(B, T, K, N // K, H)
        new_cache = None
        if cache is not None:
            # Write this chunk at slot `index` of the head-major cache [B, K, S, H] and attend over all of
            # it: per (b, kv head) the S keys are contiguous, so decoding reads the cache without copies.
            k_BKTH, v_BKTH = (jnp.swapaxes(t, 1, 2).astype(cache["k"].dtype) for t in (k, v))
            k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k_BKTH, index, axis=2)
            v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v_BKTH, index, axis=2)
            new_cache = {"k": k, "v": v}
            k, v = k.astype(dt), v.astype(dt)
            kv_spec = "BKSH"
        else:
            kv_spec = "BSKH"
        if cache is not None and T == 1 and _decode_reduce():
            out = _decode_attention(q, k, v, mask_BTS, dt).reshape(B, T, N, H)
        else:
            scores = jnp.einsum(f"BTKGH,{kv_spec}->BKGTS", q, k, preferred_element_type=_acc(dt)) * (H**-0.5)
            scores = jnp.where(mask_BTS[:, None, None, :, :], scores, NEG_INF)
            probs = jax.nn.softmax(scores, axis=-1).astype(dt)
            out = jnp.einsum(f"BKGTS,{kv_spec}->BTKGH", probs, v).reshape(B, T, N, H)
        y = jnp.einsum("BTNH,NHD->BTD", out, self.o[...].astype(dt))
        if c.o_bias:
            y = y + self.o_bias[...].astype(dt)
        return tap("dense", out.reshape(B, T, N * H), y, c.o_bias), new_cache


class MLP(nnx.Module):
    def __init__(self, c: LlamaConfig, rngs: nnx.Rngs):
        pd = jnp.dtype(c.param_dtype)
        self.gate = _param(rngs, (c.d_model, c.d_ff), ("embed", "mlp"), pd)
        self.up = _param(rngs, (c.d_model, c.d_ff), ("embed", "mlp"), pd)
        self.down = _param(rngs, (c.d_ff, c.d_model), ("mlp", "embed"), pd)
        if c.mlp_bias:
            self.gate_bias = _param(rngs, (c.d_ff,), ("mlp",), pd, zeros=True)
            self.up_bias = _param(rngs, (c.d_ff,), ("mlp",), pd, zeros=True)
            self.down_bias = _param(rngs, (c.d_model,), ("norm",), pd, zeros=True)
        self.c = c

    def __call__(self, x_BTD):
        dt = jnp.dtype(self.c.dtype)
        x = x_BTD.astype(dt)
        bias = self.c.mlp_bias
        g = x @ self.gate[...].astype(dt)
        u = x @ self.up[...].astype(dt)
        if bias:
            g, u = g + self.gate_bias[...].astype(dt), u + self.up_bias[...].astype(dt)
        g, u = tap("dense", x, g, bias), tap("dense", x, u, bias)
        h_BTF = jax.nn.silu(g) * u
        y = h_BTF @ self.down[...].astype(dt)
        if bias:
            y = y + self.down_bias[...].astype(dt)
        return tap("dense", h_BTF, y, bias)


class DecoderLayer(nnx.Module):
    def __init__(self, c: LlamaConfig, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(c.d_model, c.rms_eps, jnp.dtype(c.param_dtype))
        self.attn = Attention(c, rngs)
        self.mlp_norm = RMSNorm(c.d_model, c.rms_eps, jnp.dtype(c.param_dtype))
        self.mlp = MLP(c, rngs)

    def __call__(self, x_BTD, cos, sin, mask_BTS, cache=None, index=None):
        # The residual stream is float32 (HF keeps it in the compute dtype; identical in fp32).
        h, new_cache = self.attn(self.attn_norm(x_BTD), cos, sin, mask_BTS, cache, index)
        x_BTD = x_BTD + h.astype(x_BTD.dtype)
        x_BTD = x_BTD + self.mlp(self.mlp_norm(x_BTD)).astype(x_BTD.dtype)
        return x_BTD, new_cache


_REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _layer_fwd(layer, x, cos, sin, mask):
    return layer(x, cos, sin, mask)[0]


class Llama(nnx.Module):
    """`model(input_ids_BT, attention_mask_BT=None) -> logits_BTV` (float32)."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        pd = jnp.dtype(cfg.param_dtype)
        self.cfg = cfg
        self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), pd)
        self.layers = nnx.List([DecoderLayer(cfg, rngs) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.rms_eps, pd)
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), pd)

    # ------------------------------------------------------------------ pieces
    def embed_tokens(self, ids_BT):
        return tap("embed", ids_BT, jnp.take(self.embed[...], ids_BT, axis=0).astype(_acc(self.embed.dtype)))

    def unembed(self, x_BTD):
        x = self.final_norm(x_BTD)
        dt = jnp.dtype(self.cfg.dtype)
        w = self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]
        x = x.astype(dt)
        return tap("head", x, jnp.matmul(x, w.astype(dt), preferred_element_type=_acc(dt)))

    def __call__(
        self,
        input_ids_BT,
        attention_mask_BT=None,
        *,
        positions_BT=None,
        hidden_layer: int | None = None,
        unembed: bool = True,
    ):
        """Full-sequence forward. Positions default to arange (as HF training/probability passes).

        With `hidden_layer=i`, also returns the residual stream after decoder layer i (RMU), from the
        same forward: `(logits_BTV, hidden_BTD)`. With `unembed=False` the first output is the last
        layer's residual stream x_BTD instead of the logits (`model.unembed` applies norm + LM head).
        """
        B, T = input_ids_BT.shape
        if attention_mask_BT is None:
            attention_mask_BT = jnp.ones((B, T), bool)
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
        causal_TS = jnp.tril(jnp.ones((T, T), bool))
        mask_BTS = causal_TS[None] & attention_mask_BT.astype(bool)[:, None, :]
        cos, sin = rope_cos_sin(positions_BT, jnp.asarray(rope_inv_freq(self.cfg)))
        x = self.embed_tokens(input_ids_BT)
        hidden = None
        for i, layer in enumerate(self.layers):
            if self.cfg.remat == "none":
                x = _layer_fwd(layer, x, cos, sin, mask_BTS)
            else:
                x = nnx.remat(_layer_fwd, policy=_REMAT_POLICIES[self.cfg.remat])(
                    layer, x, cos, sin, mask_BTS
                )
            if hidden_layer is not None and i == hidden_layer:
                hidden = x
        logits = self.unembed(x) if unembed else x
        if hidden_layer is not None:
            if hidden is None:
                raise ValueError(f"hidden_layer={hidden_layer} but the model has {len(self.layers)} layers")
            return logits, hidden
        return logits

    def decode_step(
        self, input_ids_BT, positions_BT, kv_mask_BS, cache: Cache, index, last_only: bool = False
    ):
        """Forward a chunk of T tokens written into cache slots [index, index+T).

        kv_mask_BS marks the valid cache slots (prompt tokens that are not padding, and generated ones);
        a query at slot index+t sees slots <= index+t. Returns (logits_BTV, new_cache); with
        `last_only=True` the LM head runs on the chunk's last position only (logits_B1V: a prefill).
        """
        B, T = input_ids_BT.shape
        S = cache[0]["k"].shape[2]
        q_slot_T = index + jnp.arange(T)
        mask_BTS = (jnp.arange(S)[None, :] <= q_slot_T[:, None])[None] & kv_mask_BS[:, None, :]
        cos, sin = rope_cos_sin(positions_BT, jnp.asarray(rope_inv_freq(self.cfg)))
        x = self.embed_tokens(input_ids_BT)
        new_cache = []
        for layer, lc in zip(self.layers, cache, strict=True):
            x, nc = layer(x, cos, sin, mask_BTS, lc, index)
            new_cache.append(nc)
        return self.unembed(x[:, -1:] if last_only else x), new_cache


def init_cache(cfg: LlamaConfig, batch: int, length: int, dtype=None) -> Cache:
    dt = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, cfg.n_kv_heads, length, cfg.head_dim)  # head-major [B, K, S, H]
    return [{"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)} for _ in range(cfg.n_layers)]
