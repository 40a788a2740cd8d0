r"""Draw a run's plots again, on demand: from its metrics.jsonl and its latest good checkpoint, so
it also works while the run is still training (from another terminal).

    python experiments/plot.py --workdir=DIR [--point=3/resid_post]

writes DIR/plots/training.png, density.png (measured on --rows rows of the run's data) and, for
image data, atoms.png; for a run on several hook points (model.hookpoints), those of --point's SAE
into DIR/plots/POINT/.
"""

import sys

from absl import app, flags

from saejax import cli
from saejax.evaluate import artifacts
from saejax.errors import SaejaxError

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's --workdir.")
_ROWS = flags.DEFINE_integer("rows", 16384, "Rows of the run's data to measure feature densities on.", lower_bound=1)
_POINT = flags.DEFINE_string("point", "", "A run on several hook points: the one to plot (e.g. 3/resid_post).")
flags.mark_flag_as_required("workdir")


def main(argv):
    cli.quiet_tool(argv)
    try:
        print(f"plots in {artifacts.replot(_WORKDIR.value, _ROWS.value, _POINT.value)}")
    except SaejaxError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
