r"""Dense ReLU SAE train step vs. the same-run numpy f32 matmul rate.

    python -m benchmarks.step_benchmark [--d_in=512 --d_sae=8192 --batch=4096 --repeats=10]

A minimal dense step needs 10·B·d·F FLOPs: encoder forward, decoder forward, dW_dec, dz and
dW_enc (the b_dec gradient through the encoder is a sum over the batch first, no B×F×d matmul).
Reports the step's achieved rate on that count as a fraction of numpy's f32 matmul rate on the
step's own matmul shapes, measured in the same process, and the same for a plain-autodiff step
written as (x - b_dec) @ W_enc, which spends an extra B×F×d matmul on the b_dec gradient.
Writes benchmarks/results/step_benchmark.{json,md}.
"""

import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import saejax
from benchmarks import numpy_matmul_rate, relu_l1_setup, time_steps, write_results

_D_IN = flags.DEFINE_integer("d_in", 512, "Input width d.")
_D_SAE = flags.DEFINE_integer("d_sae", 8192, "Dictionary size F.")
_BATCH = flags.DEFINE_integer("batch", 4096, "Batch size B.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed repetitions (the median is reported).")
_OUT = flags.DEFINE_string("out", str(Path(__file__).parent / "results"), "Output directory.")


def plain_encoder_relu_step(d_in: int, d_sae: int):
    """Reference: the same ReLU+L1 Adam step written naively, (x - b_dec) @ W_enc under autodiff."""
    optimizer = optax.adam(1e-4)

    def loss_fn(p, x):
        z = jax.nn.relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
        x_hat = z @ p["W_dec"] + p["b_dec"]
        return jnp.mean(jnp.sum((x - x_hat) ** 2, -1)) + 5.0 * jnp.mean(jnp.sum(z, -1))

    def step(state, x):
        params, opt_state = state
        grads = jax.grad(loss_fn)(params, x)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def init(key):
        params = saejax.make_sae("relu", d_in, d_sae).init(key)
        return params, optimizer.init(params)

    return jax.jit(step, donate_argnums=0), init


def main(argv):
    del argv
    b, d, f, repeats = _BATCH.value, _D_IN.value, _D_SAE.value, _REPEATS.value
    batch = jnp.asarray(np.random.default_rng(1).standard_normal((b, d), dtype=np.float32))
    minimal_flops = 10.0 * b * d * f

    numpy_rate = numpy_matmul_rate(b, d, f, repeats)

    saejax_step, state = relu_l1_setup(d, f, batch)
    saejax_s = time_steps(saejax_step, state, batch, repeats)

    plain_step, plain_init = plain_encoder_relu_step(d, f)
    plain_s = time_steps(lambda s, x: (plain_step(s, x),) * 2, plain_init(jax.random.key(0)), batch, repeats)

    rows = []
    for name, seconds in [("saejax step", saejax_s), ("plain autodiff step", plain_s)]:
        rate = minimal_flops / seconds
        rows.append({"variant": name, "step_s": seconds, "flops_per_s_on_10BdF": rate,
                     "fraction_of_numpy_matmul": rate / numpy_rate["flops_per_s"]})
    result = {
        "shape": {"batch": b, "d_in": d, "d_sae": f, "dtype": "float32"},
        "numpy_matmul": numpy_rate, "steps": rows, "repeats": repeats,
        "jax": jax.__version__, "numpy": np.__version__, "backend": jax.default_backend(),
        "machine": platform.processor() or platform.machine(),
    }
    table = [f"ReLU+L1 Adam step, B={b}, d_in={d}, d_sae={f}, f32, median of {repeats}; "
             f"numpy f32 matmul {numpy_rate['flops_per_s'] / 1e9:.1f} GFLOP/s (same run)", "",
             "| variant | step (s) | GFLOP/s on 10·B·d·F | fraction of numpy matmul |", "|---|---|---|---|"]
    table += [f"| {r['variant']} | {r['step_s']:.3f} | {r['flops_per_s_on_10BdF'] / 1e9:.1f} | "
              f"{r['fraction_of_numpy_matmul']:.1%} |" for r in rows]
    write_results(_OUT.value, "step_benchmark", result, table)


if __name__ == "__main__":
    app.run(main)
