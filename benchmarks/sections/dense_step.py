"""The dense ReLU SAE train step against the same-run numpy f32 matmul rate.

A minimal dense step needs 10·B·d·F FLOPs: encoder forward, decoder forward, dW_dec, dz and dW_enc
(the b_dec gradient through the encoder is a sum over the batch first, no B×F×d matmul). Reports the
step's rate on that count as a fraction of numpy's f32 matmul rate on the step's own three matmul
shapes, measured in the same process (`benchmarks.numpy_matmul_rate`), and the same for a
plain-autodiff step written as (x - b_dec) @ W_enc, which spends an extra B×F×d matmul on the b_dec
gradient. Medians of `repeats` steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import saejax
from benchmarks import numpy_matmul_rate, relu_l1_setup, time_steps

SIZES = {"full": {"d_in": 512, "d_sae": 8192, "batch": 4096, "repeats": 10},
         "quick": {"d_in": 64, "d_sae": 512, "batch": 256, "repeats": 2}}


def plain_encoder_relu_step(d_in: int, d_sae: int):
    """(jitted step, init) of the same ReLU+L1 Adam step written naively, (x - b_dec) @ W_enc under autodiff."""
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


def measure(s: dict) -> dict:
    b, d, f, repeats = s["batch"], s["d_in"], s["d_sae"], s["repeats"]
    batch = jnp.asarray(np.random.default_rng(1).standard_normal((b, d), dtype=np.float32))
    numpy_rate = numpy_matmul_rate(b, d, f, repeats)
    saejax_step, state = relu_l1_setup(d, f, batch)
    saejax_s = time_steps(saejax_step, state, batch, repeats)
    plain_step, plain_init = plain_encoder_relu_step(d, f)
    plain_s = time_steps(lambda s, x: (plain_step(s, x),) * 2, plain_init(jax.random.key(0)), batch, repeats)
    rows = []
    for name, seconds in [("saejax step", saejax_s), ("plain autodiff step", plain_s)]:
        rate = 10.0 * b * d * f / seconds
        rows.append({"variant": name, "step_s": seconds, "flops_per_s_on_10BdF": rate,
                     "fraction_of_numpy_matmul": rate / numpy_rate["flops_per_s"]})
    return {"shape": {"batch": b, "d_in": d, "d_sae": f, "dtype": "float32"}, "numpy_matmul": numpy_rate,
            "steps": rows, "repeats": repeats}


def table(result: dict) -> list[str]:
    shape = result["shape"]
    lines = [f"Dense ReLU+L1 Adam step, B={shape['batch']}, d_in={shape['d_in']}, d_sae={shape['d_sae']}, f32, median "
             f"of {result['repeats']}; numpy f32 matmul {result['numpy_matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s "
             "(same run)", "",
             "| variant | step (s) | GFLOP/s on 10·B·d·F | fraction of numpy matmul |", "|---|---|---|---|"]
    return lines + [f"| {r['variant']} | {r['step_s']:.3f} | {r['flops_per_s_on_10BdF'] / 1e9:.1f} | "
                    f"{r['fraction_of_numpy_matmul']:.1%} |" for r in result["steps"]]
