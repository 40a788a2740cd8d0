"""Hook points: one function a forward pass calls at each (layer, site), and the record of what
it was asked to capture.

A hook is ``hook(layer: int, site: str, x: jax.Array) -> jax.Array``; forwards call
`HookPoints.apply` at each point, which runs the user's hook and keeps the values of the
requested points. Everything is traced, so hooks work under ``jax.jit``.
"""

from collections.abc import Callable, Iterable

import jax

from saejax.errors import ConfigError
from saejax.models import SITES

Hook = Callable[[int, str, jax.Array], jax.Array]


def check_points(points: Iterable[tuple[int, str]], n_layers: int) -> tuple[tuple[int, str], ...]:
    """The (layer, site) points as a tuple; ConfigError naming a layer or site that does not exist."""
    points = tuple((int(layer), str(site)) for layer, site in points)
    for layer, site in points:
        if site not in SITES:
            raise ConfigError(f"unknown hook site {site!r}; valid: {', '.join(SITES)}")
        if not 0 <= layer < n_layers:
            raise ConfigError(f"hook layer {layer} does not exist: the model has layers 0..{n_layers - 1}")
    return points


def check_transcoder_sites(site: str, target_site: str) -> None:
    """ConfigError unless `target_site` comes after `site` in a block (`SITES` is in that order): a
    transcoder reads site and reconstructs target_site of the same layer (e.g. mlp_in -> mlp_out),
    and the splice replaces target_site with what it computed from site earlier in the pass."""
    for field, name in (("model.site", site), ("model.target_site", target_site)):
        if name not in SITES:
            raise ConfigError(f"unknown hook site {field}={name!r}; valid: {', '.join(SITES)}")
    if SITES.index(target_site) <= SITES.index(site):
        raise ConfigError(f"model.target_site={target_site!r} must come after model.site={site!r} in a block "
                          f"({' -> '.join(SITES)}): a transcoder reconstructs a later activation from an earlier one")


class HookPoints:
    """Calls `hook` at every point and records the (possibly replaced) values of `capture`."""

    def __init__(self, hook: Hook | None, capture: Iterable[tuple[int, str]], n_layers: int) -> None:
        self.hook = hook
        self.capture = set(check_points(capture, n_layers))
        self.captured: dict[tuple[int, str], jax.Array] = {}

    def apply(self, layer: int, site: str, x: jax.Array) -> jax.Array:
        if self.hook is not None:
            x = self.hook(layer, site, x)
        if (layer, site) in self.capture:
            self.captured[(layer, site)] = x
        return x


def replace_at(layer: int, site: str, fn: Callable[[jax.Array], jax.Array]) -> Hook:
    """A hook applying `fn` to the activations at one (layer, site) and leaving every other point."""
    check_points([(layer, site)], 10**9)

    def hook(at_layer, at_site, x):
        return fn(x) if (at_layer, at_site) == (layer, site) else x

    return hook
