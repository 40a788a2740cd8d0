r"""One contender of the peer comparison, timed in a process of its own (`benchmarks.run` starts it).

    python -m benchmarks.peer_step --contender=saejax|saelens|sparsify|plain|compiled --arch=relu|topk \
        --d_in=512 --d_sae=8192 --batch=4096 [--steps=5] [--malloc=tuned|default]

Prints one JSON line {"step_s": median of --steps after two warm-up steps}. Each framework gets a
fresh process, so neither one's threads, caches or allocator state touch the other's timing.
"""

import json

from absl import app, flags

_CONTENDER = flags.DEFINE_enum("contender", "saejax", ["saejax", "saelens", "sparsify", "plain", "compiled"], "What to time.")
_ARCH = flags.DEFINE_enum("arch", "relu", ["relu", "topk"], "SAE: relu + L1 or topk (+ AuxK).")
_D_IN = flags.DEFINE_integer("d_in", 512, "Input width.")
_D_SAE = flags.DEFINE_integer("d_sae", 8192, "Dictionary size.")
_BATCH = flags.DEFINE_integer("batch", 4096, "Batch size.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (the median is printed).")
_MALLOC = flags.DEFINE_enum("malloc", "tuned", ["tuned", "default"], "tuned: saejax.kernels.cpu.tune_malloc() first.")


def main(argv):
    del argv
    if _MALLOC.value == "tuned":
        from saejax.kernels import cpu  # noqa: PLC0415

        cpu.tune_malloc()
    import numpy as np  # noqa: PLC0415

    from benchmarks import median_seconds, step_runner  # noqa: PLC0415
    from benchmarks.run import K, saejax_setup  # noqa: PLC0415

    d, f, b = _D_IN.value, _D_SAE.value, _BATCH.value
    x = np.random.default_rng(1).standard_normal((b, d), dtype=np.float32)
    if _CONTENDER.value == "saejax":
        import jax  # noqa: PLC0415

        batch = jax.numpy.asarray(x)
        step, state, _ = saejax_setup(_ARCH.value, d, f, batch)
        one = step_runner(step, state, batch)
    else:
        import torch  # noqa: PLC0415

        from benchmarks import torch_reference  # noqa: PLC0415

        x_torch = torch.from_numpy(x)
        if _CONTENDER.value == "saelens":
            one = torch_reference.saelens_step(_ARCH.value, d, f, x_torch, k=K)
        elif _CONTENDER.value == "sparsify":
            if _ARCH.value != "topk":
                raise app.UsageError("--contender=sparsify trains TopK only: pass --arch=topk")
            one = torch_reference.sparsify_step(d, f, x_torch, k=K)
        else:
            one = torch_reference.plain_step(_ARCH.value, d, f, x_torch, k=K, compile=_CONTENDER.value == "compiled")
    print(json.dumps({"step_s": median_seconds(one, _STEPS.value, warmup=2)}), flush=True)


if __name__ == "__main__":
    app.run(main)
