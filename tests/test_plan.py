"""`cel-jax plan`: exact per-device bytes against sharded arrays on 8 fake CPU devices; presets; table."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cel_jax.model import Llama, LlamaConfig
from cel_jax.scale import plan, plan_table
from cel_jax.scale.sharding import make_mesh, shard_model

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)]
CONFIGS = {
    "tiny": LlamaConfig.tiny(),
    # D=36 does not divide by fsdp 8, K=1 and V=250 not by tensor 2/4: those axes stay replicated.
    "odd": LlamaConfig.tiny(
        d_model=36,
        head_dim=9,
        n_kv_heads=1,
        d_ff=120,
        vocab_size=250,
        tie_word_embeddings=False,
        attention_bias=True,
        o_bias=True,
        mlp_bias=True,
    ),
}


def _per_device(tree) -> int:
    leaves = jax.tree.leaves(tree)
    for x in leaves:  # every device holds a block of the same size
        assert len({s.data.nbytes for s in x.addressable_shards}) == 1
    return sum(x.addressable_shards[0].data.nbytes for x in leaves)


def _zeros_model(cfg: LlamaConfig) -> Llama:
    """A Llama with every parameter zero: byte counts do not depend on values, and eager random init
    costs ~10 s of small compiles on the shared 2-core CPU."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state))


def _sharded(cfg: LlamaConfig, shape):
    """(params, adamw state) placed on a real mesh of the fake devices."""
    mesh = make_mesh(shape)
    params = nnx.state(shard_model(_zeros_model(cfg), mesh), nnx.Param)
    tx = optax.adamw(1e-3, weight_decay=0.01)
    # Optimizer state sharded like the params (a bare jax.jit(tx.init) would replicate it).
    opt_shd = optax.tree_map_params(
        tx,
        lambda _, s: s,
        jax.eval_shape(tx.init, params),
        jax.tree.map(lambda x: x.sharding, params),
        transform_non_params=lambda _: NamedSharding(mesh, P()),
    )
    return params, jax.jit(tx.init, out_shardings=opt_shd)(params)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("shape", MESHES)
def test_param_and_optimizer_bytes_equal_the_sharded_arrays(name, shape):
    params, opt_state = _sharded(CONFIGS[name], shape)
    est = plan.estimate(CONFIGS[name], shape, batch=8, seq_len=16, optimizer="adamw")
    assert est["params"] == _per_device(params)
    assert est["optimizer"] == _per_device(opt_state)
    assert est["gradients"] == est["params"]


def test_engine_optimizer_state_bytes():
    """The engine's optax chain (clip, masked AdamW, schedule), initialised eagerly as training.train does."""
    from cel_jax.training import optim

    tx = optim.make_optimizer(ml_collections.ConfigDict(dict(lr=1e-5, weight_decay=0.01, clip=1.0)), 100, 10)
    for shape in [(1, 4, 2), (2, 2, 2)]:
        mesh = make_mesh(shape)
        model = shard_model(_zeros_model(CONFIGS["odd"]), mesh)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        state = tx.init(params)  # eager: zeros_like keeps each parameter's sharding
        rep = NamedSharding(mesh, P())
        state = jax.tree.map(lambda x, rep=rep: x if x.ndim else jax.device_put(x, rep), state)
        assert plan.optimizer_bytes_per_device(CONFIGS["odd"], shape, tx) == _per_device(state)
        assert plan.optimizer_bytes_per_device(CONFIGS["odd"], shape, tx) == 2 * _per_device(params) + 8


def test_replicated_axes_are_counted_in_full():
    # "odd" on (1, 8, 1): D=36 is not divisible by 8, so nothing is sharded at all.
    cfg = CONFIGS["odd"]
    assert plan.param_bytes_per_device(cfg, (1, 8, 1)) == cfg.num_params * 4
    assert plan.param_bytes_per_device(cfg, (1, 1, 1)) == cfg.num_params * 4
    assert (
        plan.param_bytes_per_device(CONFIGS["tiny"], (1, 1, 1), "bfloat16") == CONFIGS["tiny"].num_params * 2
    )


def test_llama3_8b_closed_form():
    cfg = plan.model_config("llama-3.1-8b")
    norms = (2 * 32 + 1) * 4096  # RMSNorm scales: logical axis "norm", replicated
    est = plan.estimate(cfg, (1, 16, 1), batch=32, seq_len=512, param_dtype="float32", method="pdu")
    assert est["params"] == (cfg.num_params - norms) * 4 // 16 + norms * 4
    assert est["optimizer"] == 2 * est["params"] + 4
    assert est["reference"] == 0 and est["streams"] == 2
    npo = plan.estimate(cfg, (1, 16, 1), batch=32, seq_len=512, method="npo", reference_dtype="bfloat16")
    assert npo["reference"] == (cfg.num_params - norms) * 2 // 16 + norms * 2
    acc = plan.estimate(cfg, (1, 16, 1), batch=32, seq_len=512, grad_accum=4)
    assert acc["grad_accum_buffer"] == acc["params"]
    assert acc["total"] == sum(acc[k] for k, _ in plan_table.ROWS[:-1])


@pytest.mark.parametrize(
    "name,n",
    [
        ("llama-3.1-8b", 8_030_261_248),
        ("meta-llama/Llama-3.2-1B-Instruct", 1_235_814_400),
        ("llama-3.2-3b", 3_212_749_824),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008),
        ("meta-llama/Llama-2-7b-chat-hf", 6_738_415_616),
        ("open-unlearning/tofu_Llama-3.2-1B-Instruct_full", 1_235_814_400),
    ],
)
def test_presets_have_the_published_parameter_counts(name, n):
    assert plan.model_config(name).num_params == n


def test_local_config_json_and_unknown_model(tmp_path):
    cfg = LlamaConfig.tiny(vocab_size=300)
    (tmp_path / "config.json").write_text(__import__("json").dumps(cfg.to_hf_dict()))
    assert plan.model_config(str(tmp_path)).vocab_size == 300
    with pytest.raises(ValueError, match="not a known preset"):
        plan.model_config("some-org/mystery-model")


def test_activation_policies_order_and_scaling():
    cfg = plan.model_config("llama-3.2-1b", dtype="bfloat16")
    act = {
        r: plan.activation_bytes(cfg, (1, 8, 1), 16, 512, r)
        for r in ("none", "dots_saveable", "dots_with_no_batch_dims_saveable", "full")
    }
    layers = [act[r]["layers"] for r in ("none", "dots_saveable", "dots_with_no_batch_dims_saveable", "full")]
    assert layers == sorted(layers, reverse=True) and len(set(layers)) == 4
    # full remat keeps only the float32 layer inputs: L * b * T * D * 4
    assert act["full"]["layers"] == 16 * 2 * 512 * 2048 * 4
    double = plan.activation_bytes(cfg, (1, 8, 1), 32, 512, "full")
    assert double["layers"] == 2 * act["full"]["layers"] and double["outside"] == 2 * act["full"]["outside"]
    assert (
        plan.activation_bytes(cfg, (1, 8, 1), 16, 512, "full", streams=2)["layers"]
        == 2 * act["full"]["layers"]
    )
    with pytest.raises(ValueError, match="not divisible by data\\*fsdp"):
        plan.activation_bytes(cfg, (2, 8, 1), 8, 512)
    with pytest.raises(ValueError, match="unknown remat"):
        plan.activation_bytes(cfg, (1, 8, 1), 16, 512, "some")


def test_activation_estimate_is_near_xla_on_one_device():
    """Without remat, the estimate is within 2x of XLA's temporary buffers for value_and_grad (CPU)."""
    cfg = LlamaConfig.tiny(n_layers=1)
    gd, state = nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))), nnx.Param)

    def loss(p, x):
        logits = nnx.merge(gd, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, x).mean()

    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), state)
    ids = jax.ShapeDtypeStruct((4, 32), jnp.int32)
    temp = jax.jit(jax.value_and_grad(loss)).lower(params, ids).compile().memory_analysis().temp_size_in_bytes
    est = plan.activation_bytes(cfg, (1, 1, 1), 4, 32, "none")["total"]
    assert 0.5 < est / temp < 2.0, (est, temp)


def test_method_needs():
    assert plan.method_needs(None) == dict(streams=1, reference=False, ref_logits=0, ref_hidden=0)
    assert plan.method_needs("pdu")["streams"] == 2
    assert plan.method_needs("grad_ascent")["streams"] == 1
    assert plan.method_needs("idk_dpo") == dict(streams=3, reference=True, ref_logits=0, ref_hidden=0)
    assert plan.method_needs("undial")["ref_logits"] == 1
    assert plan.method_needs("grad_diff", "kl") == dict(streams=2, reference=True, ref_logits=1, ref_hidden=0)
    assert plan.method_needs("rmu")["ref_hidden"] == 1
    with pytest.raises(ValueError, match="unknown unlearning method"):
        plan.method_needs("nope")


def test_estimate_rejects_bad_input():
    cfg = CONFIGS["tiny"]
    with pytest.raises(ValueError, match="-1"):
        plan.estimate(cfg, (1, -1, 1), 8, 16)
    with pytest.raises(ValueError, match="unknown optimizer"):
        plan.estimate(cfg, (1, 8, 1), 8, 16, optimizer="lion")
    with pytest.raises(ValueError, match="grad_accum"):
        plan.estimate(cfg, (1, 8, 1), 8, 16, grad_accum=0)
    with pytest.raises(ValueError, match="mesh shape"):
        plan.estimate(cfg, (8, 1), 8, 16)


def test_suggest_mesh_prefers_fsdp():
    cfg = plan.model_config("llama-3.1-8b", dtype="bfloat16", remat="full")
    assert plan.suggest_mesh(cfg, 16, 32, 512, 16 * plan.GIB, method="pdu") == (1, 16, 1)
    # 8 sequences cannot give each of 16 chips one: tensor parallelism over 2 chips of a host
    assert plan.suggest_mesh(cfg, 16, 8, 512, 16 * plan.GIB, method="pdu") == (1, 8, 2)
    assert plan.suggest_mesh(cfg, 4, 8, 512, 16 * plan.GIB) is None


def _config(method="pdu", **kw):
    c = ml_collections.ConfigDict()
    c.method = method
    c.model = dict(name_or_path="llama-3.1-8b", param_dtype="float32", dtype="bfloat16", remat="full")
    c.mesh = dict(shape=(1, -1, 1))
    c.batch_size = 32
    c.max_length = 512
    c.grad_accum = 1
    c.update(kw)
    return c


def test_plan_command_sweeps_device_counts(capsys):
    assert plan_table.plan_command(_config(), None) == 0  # the command line's entry point
    out = capsys.readouterr().out
    assert "llama-3.1-8b (8.03 B params)" in out and "method pdu" in out
    for label in ("(1, 16, 1)", "(1, 32, 1)", "params", "optimizer state", "activations (est.)", "fits v5e"):
        assert label in out
    assert "(1, 64, 1): batch 32 is not divisible" in out  # 64 chips cannot split 32 sequences


def test_plan_command_with_an_engine_config(capsys):
    from cel_jax.config_base import unlearn_config

    c = unlearn_config()
    c.model.name_or_path = "meta-llama/Llama-3.2-1B-Instruct"
    c.mesh.shape = (1, 8, 1)
    c.batch_size = 16
    c.method = "grad_ascent"  # forget-only: the primal-dual solver adds the retain NLL (2 forward passes)
    assert plan_table.plan_command(c, None) == 0
    out = capsys.readouterr().out
    assert "micro-batch 16 x 512 tokens, grad_accum 4" in out and "config.optim" in out
    assert "forward passes inside the gradient: 2" in out
    lines = {ln[: plan_table.NAME_W].strip(): ln[plan_table.NAME_W :].split() for ln in out.splitlines()}
    cfg = plan.model_config("llama-3.2-1b", dtype="float32", remat="none")
    est = plan.estimate(cfg, (1, 8, 1), 16, 512, method="grad_ascent", retain_loss="nll", grad_accum=4)
    assert float(lines["optimizer state"][0]) == pytest.approx(est["optimizer"] / plan.GIB, abs=0.006)
    assert float(lines["grad accumulator"][0]) == pytest.approx(est["params"] / plan.GIB, abs=0.006)
    assert float(lines["total / device"][0]) == pytest.approx(est["total"] / plan.GIB, abs=0.006)


def test_plan_command_on_a_local_model(tmp_path, capsys):
    (tmp_path / "config.json").write_text(__import__("json").dumps(LlamaConfig.tiny().to_hf_dict()))
    c = _config(
        ml_collections.ConfigDict(dict(name="npo")), mesh=dict(shape=(2, 2, 2)), batch_size=8, max_length=16
    )
    c.model.name_or_path = str(tmp_path)
    plan_table.plan_command(c, None)
    out = capsys.readouterr().out
    assert "KiB per device" in out  # units follow the size
    lines = {ln[: plan_table.NAME_W].strip(): ln[plan_table.NAME_W :].split() for ln in out.splitlines()}
    est = plan.estimate(LlamaConfig.tiny(dtype="bfloat16", remat="full"), (2, 2, 2), 8, 16, method="npo")
    assert est["reference"] == est["params"] > 0
    assert float(lines["params"][0]) == pytest.approx(est["params"] / 1024, abs=0.01)
    assert float(lines["reference model"][0]) == pytest.approx(est["reference"] / 1024, abs=0.01)
    assert float(lines["total / device"][0]) == pytest.approx(est["total"] / 1024, abs=0.01)
