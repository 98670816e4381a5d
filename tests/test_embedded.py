"""The embedded SmolLM2-135M-Instruct: GGUF conversion against transformers' own GGUF loader."""

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from cel_jax.evaluation import generate
from cel_jax.model import embedded, hf_io

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers needs it to load GGUF files

ALIAS = "smollm2-135m-instruct"
PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Who wrote the novel Pride and Prejudice?",
]


@pytest.fixture(scope="module")
def ours():
    return hf_io.load_pretrained(ALIAS)


@pytest.fixture(scope="module")
def reference():
    spec = embedded.ALIASES[ALIAS]
    gguf = embedded._ensure_gguf(spec)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model, tok


def chat_ids(tok, prompt):
    return list(
        tok.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )


def test_converted_folder_is_a_cached_hf_folder(ours):
    folder = embedded.ensure_converted(ALIAS)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (folder / f).exists()
    model, tok = ours
    assert model.cfg.n_layers == 30 and model.cfg.d_model == 576 and model.cfg.tie_word_embeddings
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )


def test_qk_permutation_roundtrip():
    w = np.arange(8 * 6 * 3, dtype=np.float32).reshape(8 * 6, 3)
    np.testing.assert_array_equal(embedded.unpermute_qk(embedded.permute_qk(w, 6), 6), w)
    assert not np.array_equal(embedded.permute_qk(w, 6), w)


def test_logits_match_transformers_gguf_loader(ours, reference):
    model, tok = ours
    ref_model, _ = reference
    for p in PROMPTS:
        ids = np.array([chat_ids(tok, p)])
        with torch.no_grad():
            ref = ref_model(torch.tensor(ids)).logits.float().numpy()
        out = np.asarray(model(jnp.asarray(ids)))
        # 30 layers in fp32: transformers' own eager vs sdpa differ by ~8e-5 here (docs/differences.md)
        assert np.abs(out - ref).max() < 2e-4, p


def test_greedy_answers_token_identical(ours, reference):
    model, tok = ours
    ref_model, _ = reference
    prompts = [chat_ids(tok, p) for p in PROMPTS]
    got = generate.greedy_generate(
        model, prompts, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, max_new_tokens=24
    )
    for p, g in zip(prompts, got, strict=True):
        with torch.no_grad():
            r = ref_model.generate(
                torch.tensor([p]),
                max_new_tokens=24,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )[0, len(p) :].tolist()
        r = r[: r.index(tok.eos_token_id)] if tok.eos_token_id in r else r
        assert g == r
    assert "Paris" in tok.decode(got[0])


def test_tokenizer_matches_transformers_gguf_tokenizer(ours, reference):
    _, tok = ours
    _, ref_tok = reference
    texts = [
        "Hello world, it's a test.",
        "The author was born in Kuwait City on 08/09/1956.",
        "  spaces\tand\nnewlines  ",
        "<|im_start|>user\nHi<|im_end|>",
    ]
    for t in texts:
        assert tok(t)["input_ids"] == ref_tok(t)["input_ids"], t
    vocab = tok.get_vocab()
    assert not any(sum(c.isdigit() for c in v) > 1 for v in vocab)  # why digit splitting changes no ids


def test_export_reloads_in_transformers_with_same_logits(ours, tmp_path):
    model, tok = ours
    out = hf_io.save_pretrained(model, tok, tmp_path / "smollm2")
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = np.array([chat_ids(tok, PROMPTS[0])])
    with torch.no_grad():
        r = ref(torch.tensor(ids)).logits.float().numpy()
    assert np.abs(np.asarray(model(jnp.asarray(ids))) - r).max() < 2e-4
    reloaded_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert reloaded_tok(PROMPTS[1])["input_ids"] == tok(PROMPTS[1])["input_ids"]


def test_generate_command_answers_sensibly():
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "cel_jax.cli.main",
            "generate",
            "--model=smollm2-135m-instruct",
            "--prompt=What is the capital of France?",
            "--max_new_tokens=24",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Paris" in p.stdout


def test_offline_and_uncached_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CEL_JAX_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(RuntimeError, match="neither cached"):
        embedded.ensure_converted(ALIAS)
