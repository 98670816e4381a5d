"""Tiny random transformers models (PyTorch) saved as HF folders: the trusted reference in parity tests."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VARIANTS = {
    "llama_tied_gqa": dict(cls="Llama", tie_word_embeddings=True, num_key_value_heads=2),
    "llama_untied_mha": dict(cls="Llama", tie_word_embeddings=False, num_key_value_heads=4),
    "llama_mqa": dict(cls="Llama", tie_word_embeddings=False, num_key_value_heads=1),
    "llama3_scaling": dict(
        cls="Llama",
        tie_word_embeddings=True,
        num_key_value_heads=2,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    "llama_bias": dict(cls="Llama", tie_word_embeddings=False, num_key_value_heads=2, attention_bias=True),
    "qwen2": dict(cls="Qwen2", tie_word_embeddings=True, num_key_value_heads=2),
    "mistral": dict(cls="Mistral", tie_word_embeddings=False, num_key_value_heads=2, sliding_window=None),
}


def make_hf_model(variant: str, seed: int = 0):
    kw = dict(VARIANTS[variant])
    cls = kw.pop("cls")
    cfg = getattr(transformers, f"{cls}Config")(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **kw,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, f"{cls}ForCausalLM")(cfg).eval()
    if kw.get("attention_bias") or cls == "Qwen2":  # biases are zero-initialised: make them matter
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.5)
    return model


def hf_logits(model, ids, mask=None):
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.tensor(np.asarray(mask))}
        return model(torch.tensor(np.asarray(ids)), **kw).logits.float().numpy()
