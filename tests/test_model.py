"""The Flax Llama against transformers' PyTorch classes, plus causality, remat and sharding semantics."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_tiny import VARIANTS, hf_logits, make_hf_model, torch, transformers

from cel_jax.evaluation import generate
from cel_jax.model import Llama, LlamaConfig, hf_io
from cel_jax.scale import sharding


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    hf = make_hf_model(request.param)
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    ours, _ = hf_io.load_pretrained(str(d), with_tokenizer=False)
    return request.param, hf, ours, d


def test_logits_match_transformers(pair):
    name, hf, ours, _ = pair
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 128, (3, 24))
    mask = np.ones_like(ids)
    mask[1, 17:] = 0  # right padding
    ref = hf_logits(hf, ids, mask)
    out = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(out[0], ref[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out[2], ref[2], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out[1, :17], ref[1, :17], atol=1e-4, rtol=0)
    assert np.abs(out - ref)[0].max() < 1e-5, name  # in practice ~2e-7


def test_greedy_generation_token_identical(pair):
    name, hf, ours, _ = pair
    rng = np.random.RandomState(1)
    prompts = [rng.randint(3, 128, n).tolist() for n in (5, 11, 8)]
    ours_out = generate.greedy_generate(ours, prompts, eos_ids=[2], pad_id=0, max_new_tokens=12)
    for p, o in zip(prompts, ours_out, strict=True):
        with torch.no_grad():
            g = hf.generate(
                torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=2, pad_token_id=0
            )[0, len(p) :].tolist()
        g = g[: g.index(2)] if 2 in g else g
        assert o == g, name


def test_left_padded_batch_equals_single_prompts(pair):
    name, _, ours, _ = pair
    if name not in ("llama_tied_gqa", "qwen2"):
        pytest.skip("padding semantics are architecture-independent; two variants suffice")
    rng = np.random.RandomState(2)
    prompts = [rng.randint(3, 128, n).tolist() for n in (3, 9, 14, 6)]
    batched = generate.greedy_generate(ours, prompts, eos_ids=[2], pad_id=0, max_new_tokens=8, batch_size=4)
    singles = [
        generate.greedy_generate(ours, [p], eos_ids=[2], pad_id=0, max_new_tokens=8, batch_size=1)[0]
        for p in prompts
    ]
    assert batched == singles


def test_shrinking_decode_equals_fixed_batch():
    """Gathering the still-generating rows into a smaller batch between segments changes no token."""
    model = Llama(LlamaConfig.tiny(), rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: 8 * x, params))  # a non-degenerate (chaotic) random model
    rng = np.random.RandomState(3)
    prompts = [rng.randint(3, 128, n).tolist() for n in (4, 7, 9, 5, 12, 6, 3)]
    ids, mask = generate.left_pad(prompts, 8, pad_id=0)  # one filler row
    free = generate.decode_batch(model, ids, mask, 7, eos_ids=[-5], max_new_tokens=24, shrink=False)
    vals, counts = np.unique(np.concatenate(free), return_counts=True)
    eos = [int(v) for v in vals[np.argsort(-counts, kind="stable")[:3]]]  # rows stop at different steps
    stats: dict = {}
    kw = dict(eos_ids=eos, max_new_tokens=24, segment=3, sizes=(6, 4, 2, 1))
    shrunk = generate.decode_batch(model, ids, mask, 7, shrink=True, stats=stats, **kw)
    fixed = generate.decode_batch(model, ids, mask, 7, shrink=False, **kw)
    assert shrunk == fixed
    cut = [next((f[:i] for i, t in enumerate(f) if t in eos), f) for f in free]
    assert cut == fixed
    assert len({len(f) for f in fixed}) > 3, fixed  # rows really ended at different steps
    assert stats["batch_sizes"][0] == 8 and len(set(stats["batch_sizes"])) > 2, stats  # shrank twice+
    single = generate.greedy_generate(model, prompts, eos_ids=eos, pad_id=0, max_new_tokens=24, batch_size=8)
    assert single == fixed  # greedy_generate shrinks by default on the CPU (SHRINK_SIZES)


def test_export_roundtrip(pair, tmp_path):
    name, hf, ours, src = pair
    out = hf_io.save_pretrained(ours, None, tmp_path / "export")
    from safetensors.numpy import load_file

    a, b = load_file(str(src / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = np.random.RandomState(3).randint(3, 128, (2, 10))
    np.testing.assert_allclose(hf_logits(reloaded, ids), hf_logits(hf, ids), atol=0, rtol=0)
    cfg_src, cfg_out = (
        json.loads((src / "config.json").read_text()),
        json.loads((out / "config.json").read_text()),
    )
    for key in (
        "hidden_size",
        "num_key_value_heads",
        "tie_word_embeddings",
        "vocab_size",
        "intermediate_size",
    ):
        assert cfg_src[key] == cfg_out[key]


def test_old_and_new_rope_config_forms_agree():
    base = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        model_type="llama",
    )
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    old = LlamaConfig.from_hf_dict({**base, "rope_theta": 5e5, "rope_scaling": scaling})
    new = LlamaConfig.from_hf_dict({**base, "rope_parameters": {"rope_theta": 5e5, **scaling}})
    assert old == new and old.rope_type == "llama3" and old.rope_factor == 8.0
    assert LlamaConfig.from_hf_dict(old.to_hf_dict()) == old


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ({"model_type": "gpt2"}, "gpt2"),
        ({"hidden_act": "gelu"}, "gelu"),
        ({"model_type": "mistral", "sliding_window": 16, "max_position_embeddings": 128}, "sliding_window"),
    ],
)
def test_unsupported_configs_fail_loudly(bad, msg):
    base = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        model_type="llama",
    )
    with pytest.raises(ValueError, match=msg):
        LlamaConfig.from_hf_dict({**base, **bad})


def _tiny(**kw):
    return Llama(LlamaConfig.tiny(**kw), rngs=nnx.Rngs(0))


def test_causality_by_gradients():
    model = _tiny(tie_word_embeddings=False)
    T = 12
    x_TD = jax.random.normal(jax.random.key(0), (T, model.cfg.d_model))

    def out_at(x, t):  # feed embeddings directly: d logits[t] / d x[s]
        graphdef, state = nnx.split(model)

        def f(x):
            m = nnx.merge(graphdef, state)
            orig = m.embed_tokens
            m.embed_tokens = lambda ids: x[None]
            y = m(jnp.zeros((1, T), jnp.int32))[0, t].sum()
            m.embed_tokens = orig
            return y

        return jax.grad(f)(x)

    for t in (0, 5, 11):
        g = np.asarray(out_at(x_TD, t))
        assert np.all(g[t + 1 :] == 0.0), t
        assert np.abs(g[: t + 1]).sum() > 0


def test_padding_mask_hides_keys():
    model = _tiny()
    ids = jnp.asarray(np.random.RandomState(0).randint(3, 256, (1, 10)))
    mask = jnp.ones((1, 10), jnp.int32).at[0, 3].set(0)
    changed = ids.at[0, 3].set(7)
    a, b = model(ids, mask), model(changed, mask)
    np.testing.assert_array_equal(np.asarray(a[0, 4:]), np.asarray(b[0, 4:]))  # masked key never read


@pytest.mark.parametrize("policy", ["full", "dots_with_no_batch_dims_saveable"])
def test_remat_gives_identical_gradients(policy):
    ids = jnp.asarray(np.random.RandomState(0).randint(3, 256, (2, 16)))

    def grads(remat):
        m = _tiny(remat=remat)
        graphdef, params = nnx.split(m, nnx.Param)
        f = lambda p: nnx.merge(graphdef, p)(ids).astype(jnp.float32).std()
        return jax.jit(jax.grad(f))(params)

    g0, g1 = grads("none"), grads(policy)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_sharded_forward_equals_single_device():
    assert jax.device_count() == 8
    model = _tiny(n_heads=4, n_kv_heads=2, d_ff=128, tie_word_embeddings=False)
    ids = jnp.asarray(np.random.RandomState(0).randint(3, 256, (8, 16)))
    ref = np.asarray(model(ids))
    mesh = sharding.make_mesh((2, 2, 2))
    sharded = sharding.shard_model(_tiny(n_heads=4, n_kv_heads=2, d_ff=128, tie_word_embeddings=False), mesh)
    q = sharded.layers[0].attn.q[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (32, 2, 16)  # D/2, N/2, H: really split
    assert sharded.layers[0].mlp.down[...].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert sharded.embed[...].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    out = jax.jit(lambda m, x: m(x))(sharded, jax.device_put(ids, sharding.data_sharding(mesh)))
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5)


def test_load_onto_mesh_places_shards(tmp_path):
    hf = make_hf_model("llama_untied_mha")
    hf.save_pretrained(tmp_path)
    mesh = sharding.make_mesh((1, 4, 2))
    model, _ = hf_io.load_pretrained(str(tmp_path), with_tokenizer=False, mesh=mesh)
    k = model.layers[1].attn.k[...]
    assert k.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    assert {s.data.shape for s in k.addressable_shards} == {(16, 2, 16)}
    ids = np.random.RandomState(0).randint(3, 128, (4, 9))
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), hf_logits(hf, ids), atol=1e-4)


def test_hidden_layer_output_is_the_residual_stream():
    hf = make_hf_model("llama_tied_gqa")
    ids = np.random.RandomState(0).randint(3, 128, (2, 7))
    with torch.no_grad():
        hs = hf(torch.tensor(ids), output_hidden_states=True).hidden_states
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours, _ = hf_io.load_pretrained(d, with_tokenizer=False)
    logits, h = ours(jnp.asarray(ids), hidden_layer=0)
    np.testing.assert_allclose(np.asarray(h), hs[1].numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ours(jnp.asarray(ids))), atol=0)
    with pytest.raises(ValueError, match="layers"):
        ours(jnp.asarray(ids), hidden_layer=5)


def test_bad_folders_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf_io.load_pretrained(str(tmp_path), with_tokenizer=False)
    with pytest.raises(FileNotFoundError):
        hf_io.load_pretrained("./does/not/exist")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_attention_reduce_equals_einsum(dtype, monkeypatch):
    """The one-token decode path (multiply-and-reduce over the cache) computes what the einsum path does."""
    from cel_jax.model import llama

    cfg = LlamaConfig.tiny(vocab_size=128, dtype=dtype)
    model = Llama(cfg, rngs=nnx.Rngs(0))
    B, P, S = 3, 5, 9
    ids = jax.random.randint(jax.random.key(1), (B, P), 0, 128)
    mask = jnp.ones((B, P), jnp.int32).at[0, :2].set(0)  # a left-padded row
    kv = jnp.concatenate([mask.astype(bool), jnp.zeros((B, S - P), bool)], 1)
    pos = jnp.maximum(jnp.cumsum(mask, 1) - 1, 0)
    _, cache = model.decode_step(ids, pos, kv, llama.init_cache(cfg, B, S), 0)
    kv = kv.at[:, P].set(True)
    outs = {}
    for mode in ("einsum", "reduce"):
        monkeypatch.setattr(llama, "DECODE_ATTENTION", mode)
        outs[mode] = model.decode_step(ids[:, :1], pos[:, -1:] + 1, kv, cache, P)
    tol = 1e-5 if dtype == "float32" else 3e-2

    def rel(a, b):  # max error relative to the values' scale (random-init logits are ~1e-4)
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        return np.abs(a - b).max() / np.abs(b).max()

    assert rel(outs["reduce"][0], outs["einsum"][0]) < tol
    for a, b in zip(jax.tree.leaves(outs["reduce"][1]), jax.tree.leaves(outs["einsum"][1]), strict=True):
        assert rel(a, b) < tol  # layer 2's cache writes follow layer 1's output
    # and the comparison can fail: attending to the padding of row 0 changes its logits
    wrong = model.decode_step(ids[:, :1], pos[:, -1:] + 1, kv.at[0, :2].set(True), cache, P)[0]
    assert rel(wrong[0], outs["reduce"][0][0]) > 3 * tol


def test_decode_segments_update_the_kv_cache_in_place():
    """Each decode segment consumes (donates) the state it is given, so a batch holds one KV cache, not
    the old and the new one (a 128-row TOFU generation batch: 2.8 GB instead of 7.2; results/memory.md)."""
    model = Llama(LlamaConfig.tiny(), rngs=nnx.Rngs(0))
    ids, mask = generate.left_pad([[5, 6, 7], [8, 9]], 2, pad_id=0)
    state = generate._prefill(model, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=8)
    k_before = state[1][0]["k"]
    eos = jnp.asarray([-1], jnp.int32)
    new, _, _ = generate._decode(model, state, eos, jnp.int32(0), steps=4, max_new_tokens=8)
    assert k_before.is_deleted()  # donated: its buffer now holds the updated cache
    assert not new[1][0]["k"].is_deleted() and new[1][0]["k"].shape == k_before.shape


def test_unsupported_model_type_fails_before_weights_are_read(tmp_path):
    from cel_jax.model import families

    hf = {**LlamaConfig.tiny().to_hf_dict(), "model_type": "gpt2"}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")  # reading it would fail otherwise
    with pytest.raises(ValueError, match=r"'gpt2' is not supported.*'llama', 'mistral', 'qwen2'"):
        hf_io.load_pretrained(str(tmp_path), with_tokenizer=False)
    assert families.supported_model_types() == ("llama", "mistral", "qwen2")


def test_registered_family_is_picked_up_by_the_loader(tmp_path):
    """A toy family (Llama's decoder under other HF names) registered here loads through `model_type`."""
    from safetensors.numpy import save_file

    from cel_jax.model import families, llama_params

    def toy_table(c):  # Llama's map with "toy." for "model." in every HF name
        table = llama_params.key_table(c)
        return {k: (hf.replace("model.", "toy.", 1), a, b) for k, (hf, a, b) in table.items()}

    toy = families.Family(
        name="toy",
        model_types=("toy",),
        model_cls=Llama,
        config_from_hf=lambda hf, **rt: LlamaConfig.from_hf_dict({**hf, "model_type": "llama"}, **rt),
        config_to_hf=LlamaConfig.to_hf_dict,
        key_table=toy_table,
        init_cache=families.LLAMA.init_cache,
    )
    model = _tiny()
    tensors = {k.replace("model.", "toy.", 1): v for k, v in hf_io.model_to_hf_tensors(model).items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({**model.cfg.to_hf_dict(), "model_type": "toy"}))
    with pytest.raises(ValueError, match="'toy' is not supported"):
        hf_io.load_pretrained(str(tmp_path), with_tokenizer=False)
    families.register(toy)
    try:
        loaded, _ = hf_io.load_pretrained(str(tmp_path), with_tokenizer=False)
    finally:
        families.unregister(toy)
    ids = jnp.asarray(np.random.RandomState(0).randint(3, 256, (2, 9)))
    np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(model(ids)))
    assert "toy" not in families.supported_model_types()
