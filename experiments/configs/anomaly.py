r"""Anomaly detection by reconstruction error on river's Statlog Shuttle table: train on normal
rows only, then score held-out rows (20 % of the normal ones plus every anomaly) by
||x - x̂||² and report the ROC-AUC.

    python experiments/train.py --workdir=/tmp/sae_anomaly --config=experiments/configs/anomaly.py

Needs ``pip install -e ".[tabular]"``. The ROC-AUC is summary.json's eval "anomaly_roc_auc";
DIR/plots/anomaly_scores.png and DIR/plots/roc.png show the score distributions and the curve.
"""

from saejax.config import base_config


def get_config():
    c = base_config()
    c.data.source = "tabular"
    c.data.tabular_rows = "normal"
    c.sae.arch = "relu"
    c.sae.d_sae = 32
    c.loss.l1 = 0.05
    c.optim.lr = 2e-3
    c.train.batch_size = 512
    c.train.steps = 2000
    c.train.log_every = 100
    return c
