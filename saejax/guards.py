"""What stops a run before it saves or exports something broken: a non-finite loss or params, and
a collapsed SAE (no better than the mean, or no latent firing). Each raises `SaejaxError` with one
line naming the step and what was kept."""

import numpy as np

from saejax.errors import SaejaxError
from saejax.step import all_finite

# A run starts from a random dictionary, so its first steps may still reconstruct worse than the mean:
# the collapse guard looks only after the warm-up and after this many steps.
COLLAPSE_GRACE_STEPS = 100


def collapse_check_from(config) -> int:
    """The step after which a collapsed SAE stops the run: the end of warm-up, at least COLLAPSE_GRACE_STEPS."""
    return max(config.optim.warmup_steps, COLLAPSE_GRACE_STEPS)


def collapse(fvu: float, l0: float) -> str | None:
    """What is wrong with an SAE whose FVU and L0 on rows it was not trained on are these, or None:
    FVU >= 1 (no better than predicting the mean) or no latent firing on any row."""
    if not fvu < 1:  # NaN too
        return f"FVU {fvu:.4g} >= 1 (no better than predicting the mean)"
    if l0 == 0:
        return "no latent fires on any row"
    return None


def _kept(last_saved: int | None) -> str:
    return f"the last good checkpoint (step {last_saved}) is kept" if last_saved else "no checkpoint was written"


def check_not_collapsed(fvu: float, l0: float, step: int, last_saved: int | None, point: str = "") -> None:
    """Stop a collapsed run before it saves: the step's FVU and L0 (measured on its batch before the
    update, rows these params were not trained on) must show a working SAE (`collapse`). point: the
    hook point of that SAE in a run of several ("" for one)."""
    problem = collapse(fvu, l0)
    if problem:
        which = f"the SAE of hook point {point}" if point else "the SAE"
        raise SaejaxError(f"{which} collapsed by step {step}: {problem} on its latest batch; stopped before saving, "
                          f"{_kept(last_saved)}; lower optim.lr or the sparsity coefficients")


def check_evaluation_not_collapsed(fvu: float, l0: float, rows: str, step: int, config) -> None:
    """Stop a run whose SAE collapsed (`collapse`) on the final evaluation's `rows` (e.g. "20000 held-out
    rows") before it exports anything, once past `collapse_check_from`."""
    problem = step > collapse_check_from(config) and collapse(fvu, l0)
    if problem:
        raise SaejaxError(f"the SAE collapsed: {problem} on {rows} after step {step}; no export written; "
                          "lower optim.lr or the sparsity coefficients")


def check_finite_loss(loss: float, step: int, log_every: int) -> None:
    """Stop a diverged run (before its next checkpoint) with an error naming the step."""
    if not np.isfinite(loss):
        raise SaejaxError(
            f"the loss became {loss} by step {step} (checked every train.log_every={log_every} steps); "
            "lower optim.lr or the loss coefficients, or check the data"
        )


def save_checkpoint(ckpt, step: int, state, loss: float, config_dict: dict, last_saved: int | None) -> int:
    """Save `state` as `step` in `ckpt` (a `saejax.checkpoint.Checkpointer`) unless its loss or params
    are non-finite: then stop with an error naming the step and leave the last good checkpoint
    (`last_saved`) as it is. Returns `step`."""
    if not (np.isfinite(loss) and all_finite(state.params)):
        raise SaejaxError(f"the loss or the parameters became non-finite by step {step}; stopped before saving, "
                          f"{_kept(last_saved)}; lower optim.lr or the loss coefficients, or check the data")
    ckpt.save(step, state, config_dict)
    return step
