r"""Two train-step changes A/B-tested against the code they replaced, both compiled in one process: the
encoder bias added inside the block maxima (`selection.top_k`'s offset) and L0 / the fired latents from
float arithmetic on z (`metrics.nonzero`).

    python -m benchmarks.step_change_ab --arch=topk --d_sae=32768 --rounds=12
    python -m benchmarks.step_change_ab --arch=relu --d_sae=8192 --rounds=12

"before" traces the train step with the earlier functions patched in (selection with the encoder
bias inside the row function, so that XLA writes x @ W + b out before the block maxima; L0 and the
fired latents from `z != 0` masks); "after" is the code as it is. Both steps get the same batch
and state, are checked to give the same metrics and parameters bit for bit, and are timed in
alternation (the order flips every round). Prints the medians and the median per-round ratio.
A comparison in one process leaves out the process-to-process spread of this machine, which
hid a 3 % gain in `step_ab`'s fresh-process A/B (BUILD_NOTES, "Performance suite").
"""

import contextlib
import statistics
import time

from absl import app, flags

_ARCH = flags.DEFINE_enum("arch", "topk", ["relu", "topk"], "SAE architecture (topk: sparse, with AuxK).")
_D_SAE = flags.DEFINE_integer("d_sae", 32768, "Dictionary size.")
_ROUNDS = flags.DEFINE_integer("rounds", 12, "Timed rounds (one step of each variant per round).")


def main(argv):
    del argv
    from saejax import runtime

    runtime.tune_malloc()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import saejax
    from saejax import batch_axis, losses, metrics, selection
    from saejax import sae as sae_lib

    def linear_top_k_before(params, x, k, dtype):
        frozen = jax.lax.stop_gradient(params)
        selected, indices = selection.chunked_top_k(lambda rows: sae_lib.linear_pre_acts_of(frozen, rows, None, dtype),
                                                    jax.lax.stop_gradient(x), k, params["b_enc"].shape[0])
        w = params["W_dec"] if "W_enc" not in params else params["W_enc"]
        return sae_lib.selected_pre_acts(x, params["b_dec"], w, params["b_enc"], selected, indices,
                                         "W_enc" not in params), indices

    def l0_before(z):
        return batch_axis.mean(jnp.sum(z != 0, axis=-1, dtype=jnp.float32))

    def fired_before(out):
        if "indices" in out.aux:
            values, indices = out.aux["values"], out.aux["indices"]
            local = jnp.zeros(out.z.shape[-1], bool).at[indices.reshape(-1)].max((values != 0).reshape(-1))
            return batch_axis.any_row(local[None])
        return batch_axis.any_row((out.z != 0).reshape(-1, out.z.shape[-1]))

    @contextlib.contextmanager
    def before():
        saved = sae_lib.linear_top_k, metrics.l0, metrics.fired_latents
        sae_lib.linear_top_k, metrics.l0, metrics.fired_latents = linear_top_k_before, l0_before, fired_before
        try:
            yield
        finally:
            sae_lib.linear_top_k, metrics.l0, metrics.fired_latents = saved

    d, f, b = 512, _D_SAE.value, 4096
    x = jnp.asarray(np.random.default_rng(1).standard_normal((b, d), dtype=np.float32))
    if _ARCH.value == "topk":
        sae = saejax.make_sae("topk", d, f, k=32, sparse=True)
        loss = losses.chain(losses.mse(), losses.auxk(1 / 32, d // 2, 1000, sae.pre_acts_of))
    else:
        sae = saejax.make_sae("relu", d, f)
        loss = losses.chain(losses.mse(), losses.l1(5.0))
    optimizer = saejax.make_optimizer(optax.adam(1e-4), sae)
    state = saejax.init_train_state(sae, loss, optimizer, jax.random.key(0), np.asarray(x[:1024]))

    def compiled():
        return saejax.jit_train_step(saejax.make_train_step(sae, loss, optimizer)).lower(state, x).compile()

    with before():
        steps = {"before": compiled()}
    steps["after"] = compiled()
    states = {name: jax.tree.map(jnp.copy, state) for name in steps}
    outs = {}
    for name, step in steps.items():
        states[name], outs[name] = step(states[name], x)
    same = all(bool(jnp.array_equal(outs["before"][m], outs["after"][m])) for m in outs["before"]) and all(
        bool(jnp.array_equal(p, q)) for p, q in zip(jax.tree.leaves(states["before"].params),
                                                    jax.tree.leaves(states["after"].params)))
    times = {name: [] for name in steps}
    for r in range(_ROUNDS.value):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            start = time.perf_counter()
            states[name], out = steps[name](states[name], x)
            jax.block_until_ready(out)
            times[name].append(time.perf_counter() - start)
    ratios = [p / q for p, q in zip(times["before"], times["after"])]
    print(f"{_ARCH.value} d_sae {f}: same results {same}; before {statistics.median(times['before']):.4f} s, "
          f"after {statistics.median(times['after']):.4f} s; median before/after {statistics.median(ratios):.4f}, "
          f"after faster in {sum(ratio > 1 for ratio in ratios)} of {len(ratios)} rounds")


if __name__ == "__main__":
    app.run(main)
