"""Several hook points in one pass (``model.hookpoints``) on a tiny random BERT: one forward hands out
every point's rows of the same tokens, each equal to the stream of that point alone; one jitted step
over the stacked states trains an SAE per point as each would train alone (to float rounding); each
SAE is evaluated, exported and loaded on its own; a run killed after a checkpoint resumes bitwise; a
run of one point is the plain run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("tokenizers")

import saejax  # noqa: E402
from saejax import assemble, guards, hookpoints, parallel, resume, step, writers  # noqa: E402
from saejax.config import base_config, complete, hookpoint_names  # noqa: E402
from saejax.data import batches  # noqa: E402
from saejax.data.stream import ModelSource  # noqa: E402
from saejax.errors import ConfigError, DataError, SaejaxError  # noqa: E402
from saejax.models.hooks import parse_points, point_name  # noqa: E402
from saejax.models.loading import load_text_model  # noqa: E402
from saejax.train import train, train_and_evaluate  # noqa: E402
from test_stream import CONTEXT, SIZES, TEXTS, tiny_bert  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POINTS = ((1, "resid_post"), (0, "mlp_out"), (1, "attn_out"))
SPEC = ",".join(point_name(p) for p in POINTS)
NAMES = SPEC.split(",")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(the tiny BERT's folder, a corpus file of TEXTS)."""
    folder = tmp_path_factory.mktemp("hookpoints")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    return tiny_bert(folder / "bert"), corpus


@pytest.fixture(scope="module")
def bert(files):
    return load_text_model(str(files[0]))


def run_config(files, hookpoints: str, steps: int = 20, every: int = 0, evaluators: str = "heldout,export"):
    """A tiny TopK run streamed from the tiny BERT (16 batches of 32 rows a fill)."""
    model_dir, corpus = files
    c = base_config()
    c.model.name, c.model.text_glob, c.model.hookpoints = str(model_dir), str(corpus), hookpoints
    c.model.context_length, c.model.eval_texts, c.model.dashboard_latents = CONTEXT, 4, 0
    c.data.source, c.data.buffer_contexts, c.data.forward_batch = "model", 64, 4
    c.sae.arch, c.sae.d_sae, c.sae.k = "topk", 64, 4
    c.train.batch_size, c.train.steps, c.train.log_every, c.train.eval_rows = 32, steps, 10, 200
    c.train.checkpoint_every, c.train.keep_checkpoints, c.train.evaluators = every, 5, evaluators
    c.log.tensorboard, c.log.progress = False, False
    return c


def test_hookpoints_are_read_checked_and_a_single_point_is_the_plain_run():
    assert parse_points(" 3/resid_post, 4/mlp_out ,") == ((3, "resid_post"), (4, "mlp_out")) and parse_points("") == ()
    for bad, says in (("3", "not LAYER/SITE"), ("3/resid", "not LAYER/SITE"), ("x/mlp_out", "not LAYER/SITE"),
                      ("3/mlp_out,3/mlp_out", "listed twice")):
        with pytest.raises(ConfigError, match=f"model.hookpoints=.*{says}"):
            parse_points(bad)
    c = base_config()
    c.data.source, c.model.hookpoints = "model", " 3/resid_post ,5/mlp_out"
    assert complete(c)[0].model.hookpoints == "3/resid_post,5/mlp_out"  # written one way: resumes compare it
    c.model.hookpoints = "5/attn_out"
    one = complete(c)[0].model
    assert (one.layer, one.site, one.hookpoints) == (5, "attn_out", "")  # one point: model.layer, model.site
    c.data.source, c.model.hookpoints = "npy", "3/resid_post,5/mlp_out"
    with pytest.raises(ConfigError, match="needs data.source='model'"):
        complete(c)
    assert hookpoint_names(complete(run_config(("bert", "x"), SPEC))[0]) == tuple(NAMES)
    assert hookpoint_names(complete(run_config(("bert", "x"), ""))[0]) == ()


def test_one_forward_hands_out_each_points_rows_of_the_same_tokens_as_its_own_stream(bert):
    def stream(points=(), layer=0, site="resid_post"):
        return ModelSource(bert, lambda: iter(TEXTS), lambda: iter(TEXTS[::10]), seed=0, layer=layer, site=site,
                           points=points, **SIZES)

    many = stream(POINTS)
    assert many.point_names == tuple(NAMES) and stream().point_names == ()
    per_fill = many.batches_per_fill(32)
    steps = (0, 3, per_fill + 1, 2 * per_fill + 5)  # inside fills 0, 1 and 2
    assert many.batch(steps[2], 32).shape == (3, 32, 16) and many.sample(40).shape == (3, 40, 16)
    assert many.heldout_batch(0, 16).shape == (3, 16, 16) and many.heldout_batch(10**6, 16).shape == (3, 0, 16)
    for i, (layer, site) in enumerate(POINTS):
        alone, view = stream(layer=layer, site=site), many.at(i)
        for step in steps:  # bit for bit: the same forward, rows and permutation
            np.testing.assert_array_equal(view.batch(step, 32), alone.batch(step, 32), err_msg=f"{layer}/{site} {step}")
            np.testing.assert_array_equal(many.batch(step, 32)[i], alone.batch(step, 32))
        np.testing.assert_array_equal(view.sample(40), alone.sample(40))
        np.testing.assert_array_equal(view.heldout_batch(1, 16), alone.heldout_batch(1, 16))
        assert view.stats == alone.stats == many.stats[i] and view.heldout_rows == alone.heldout_rows
        assert view.description == alone.description and f"layer {layer} {site}" in view.description
    # the rows of one batch are the same tokens at every point: the same positions of each fill's rows
    rows, batch = many.fill_rows(0), many.batch(2, 32)  # [R, P, d], [P, B, d]
    positions = [np.flatnonzero((rows[:, 0] == row).all(1))[0] for row in batch[0]]
    np.testing.assert_array_equal(rows[positions].swapaxes(0, 1), batch)
    assert "hook points 1/resid_post, 0/mlp_out, 1/attn_out (one forward)" in many.description
    # read and checked as the run reads it: [P, B, d_in]
    np.testing.assert_array_equal(batches.read_local_batch(many, 3, 32, 16), many.batch(3, 32))
    with pytest.raises(DataError, match=r"the SAEs expect \[3, batch, 16\]"):
        batches.check_batch(np.zeros((2, 32, 16), np.float32), 0, "model", 16, points=3)
    bad = np.zeros((3, 4, 16), np.float32)
    bad[2, 1, 5] = np.nan
    with pytest.raises(DataError, match=r"hook point 2, row 1, column 5"):
        batches.check_batch(bad, 0, "model", 16, points=3)


def _trained(config, workdir: Path):
    """(run, final device state) of `config` trained in `workdir`, with no metrics written."""
    run = assemble.prepare(config, workdir)
    state, stopped = train(run, writers.NoWriter())
    assert stopped is None
    return run, state


def test_one_pass_trains_each_sae_as_it_would_train_alone(files, tmp_path):
    run, state = _trained(run_config(files, SPEC), tmp_path / "many")
    assert run.points == tuple(NAMES) and run.where.batch_shape == (3, 32, 16)
    assert "3 topk SAEs (hook points 1/resid_post, 0/mlp_out, 1/attn_out)" in assemble.describe(run)
    assert jax.tree.leaves(state)[0].shape[0] == 3 and state.params["W_dec"].shape == (3, 64, 16)
    for i, name in enumerate(NAMES):
        alone_run, alone = _trained(run_config(files, name), tmp_path / name.replace("/", "_"))
        assert alone_run.points == () and alone_run.source.point_names == ()
        together = step.state_at(state, i)
        assert int(together.step) == int(alone.step) == 20
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(alone), jax.tree.leaves(together)):
            a, b = np.asarray(a), np.asarray(b)
            if np.issubdtype(a.dtype, np.floating):  # the batched matmuls round differently
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(a).max())),
                                           err_msg=f"{name} {jax.tree_util.keystr(path)}")
            else:  # step, dead-latent counters
                np.testing.assert_array_equal(b, a, err_msg=f"{name} {jax.tree_util.keystr(path)}")
    # per point metrics, and the plain names the mean over the points
    metrics = {"fvu": np.array([0.25, 0.5, 0.75]), "l0": np.array([4.0, 4.0, 1.0])}
    values = hookpoints.host_values(run, metrics)
    assert values["fvu"] == 0.5 and values["0/mlp_out/fvu"] == 0.5 and values["1/attn_out/l0"] == 1.0
    assert hookpoints.by_point(run, values)[2] == ("1/attn_out", {"fvu": 0.75, "l0": 1.0})
    assert hookpoints.host_values(alone_run, {"fvu": np.float32(0.5)}) == {"fvu": 0.5}


def test_each_sae_is_evaluated_exported_and_loaded_alone_and_a_killed_run_resumes_bitwise(files, tmp_path):
    config = run_config(files, SPEC, steps=30, every=10, evaluators="heldout,curves,export")
    config.train.resample_every, config.loss.dead_tokens = 10, 320  # dead after 10 steps: resampled at 10 and 20
    summary = train_and_evaluate(config, tmp_path / "whole")
    assert set(summary["points"]) == set(NAMES) and "eval" not in summary
    records = writers.read_metrics(tmp_path / "whole")
    assert {"fvu", "loss", "1/resid_post/fvu", "0/mlp_out/loss/auxk", "1/attn_out/dead_fraction"} <= set(records[-1])
    assert sum(records[1][f"{name}/resampled"] for name in NAMES) > 0  # each SAE resampled on its own point's rows
    evals = writers.read_metrics(tmp_path / "whole", split="eval")[-1]
    for name in NAMES:
        found = summary["points"][name]
        assert found["eval_split"] == "held-out" and found["eval"]["fvu"] == evals[f"{name}/fvu"] < 1
        assert found["export"] == str(tmp_path / "whole" / "export" / name)
        assert (tmp_path / "whole" / "plots" / name / "training.png").is_file()
        exported, export_config = saejax.load(tmp_path / "whole" / "export" / name)
        loaded, point_config = saejax.load(tmp_path / "whole", point=name)
        assert point_name((point_config.model.layer, point_config.model.site)) == name
        assert (export_config.model.layer, export_config.model.site, export_config.model.hookpoints) == (
            point_config.model.layer, point_config.model.site, "")
        for key in exported:
            np.testing.assert_array_equal(exported[key], loaded[key], err_msg=f"{name} {key}")
        assert json.loads((tmp_path / "whole" / "export" / name / "cfg.json").read_text())["metadata"][
            "hook_point"] == name
    with pytest.raises(DataError, match="holds an SAE per hook point"):
        saejax.load(tmp_path / "whole")

    def after_the_kill(folder, names):  # killed between the checkpoints at 20 and 30
        later = [n for n in names if n.isdigit() and int(n) > 20] if Path(folder).name == "checkpoints" else []
        return later + [n for n in names if n in ("summary.json", "export", "plots")]

    shutil.copytree(tmp_path / "whole", tmp_path / "killed", ignore=after_the_kill)
    resumed = train_and_evaluate(config, tmp_path / "killed")
    assert resumed["points"].keys() == summary["points"].keys()
    for name in NAMES:
        a, b = saejax.load(tmp_path / "whole", point=name)[0], saejax.load(tmp_path / "killed", point=name)[0]
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {key}")
    # another set of hook points cannot resume it
    other = run_config(files, "1/resid_post,0/mlp_out", steps=30)
    with pytest.raises(ConfigError, match=r"model.hookpoints: '1/resid_post,0/mlp_out,1/attn_out' -> "):
        resume.check_resumable(tmp_path / "whole", complete(other)[0])


def test_what_several_points_cannot_do_yet_is_one_clear_error(files, bert):
    with pytest.raises(ConfigError, match="hook layer 5 does not exist"):
        ModelSource(bert, lambda: iter(TEXTS), lambda: iter(()), seed=0, layer=0, site="resid_post",
                    points=((1, "resid_post"), (5, "mlp_out")))
    with pytest.raises(ConfigError, match="model.target_site .a transcoder. reads one hook point"):
        ModelSource(bert, lambda: iter(TEXTS), lambda: iter(()), seed=0, layer=0, site="mlp_in",
                    points=((0, "mlp_in"), (1, "mlp_in")), target_site="mlp_out")
    transcoder = run_config(files, SPEC)
    transcoder.model.target_site = "mlp_out"
    with pytest.raises(ConfigError, match="a transcoder .model.target_site='mlp_out'. reads one"):
        complete(transcoder)
    config = complete(run_config(files, SPEC))[0]
    config.parallel.strategy = "pmap"
    with pytest.raises(ConfigError, match="model.hookpoints: the SAEs of several hook points train on one device"):
        parallel.placement_from_config(config, None, None, None, points=3)
    with pytest.raises(SaejaxError, match="the SAE of hook point 0/mlp_out collapsed by step 200"):
        guards.check_not_collapsed(1.2, 4.0, 200, None, "0/mlp_out")
    saved = json.loads(base_config().to_json_best_effort())
    saved["data"]["source"] = "model"
    del saved["model"]["hookpoints"]  # a config saved before the field existed resumes as one point
    current = json.loads(base_config().to_json_best_effort())
    current["data"]["source"] = "model"
    assert resume._incompatible(saved, current) == []
    current["model"]["hookpoints"] = SPEC
    assert resume._incompatible(saved, current) == [f"model.hookpoints: '' -> {SPEC!r}"]


@pytest.mark.slow
def test_the_command_line_trains_several_points_and_the_dry_run_describes_them(files, tmp_path):
    model_dir, corpus = files
    flags = [f"--config.model.name={model_dir}", f"--config.model.text_glob={corpus}", f"--config.model.hookpoints={SPEC}",
             f"--config.model.context_length={CONTEXT}", "--config.model.eval_texts=4", "--config.model.dashboard_latents=2",
             "--config.data.source=model", "--config.data.buffer_contexts=64", "--config.data.forward_batch=4",
             "--config.sae.arch=topk", "--config.sae.d_sae=64", "--config.sae.k=4", "--config.train.batch_size=32",
             "--config.train.steps=20", "--config.train.log_every=10", "--config.train.eval_rows=200",
             "--config.log.tensorboard=False", "--config.log.progress=False"]
    command = [sys.executable, str(ROOT / "experiments" / "train.py"), f"--workdir={tmp_path / 'run'}", *flags]
    dry = subprocess.run([*command, "--dry_run"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert f"SAE: 3 x topk (one per hook point: {', '.join(NAMES)})" in dry.stdout and "a batch [3, 32, 16]" in dry.stdout
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for name in NAMES:
        assert "splice/cos_sim" in summary["points"][name]["eval"]
        assert (tmp_path / "run" / "dashboards" / name / "index.html").is_file()
        assert (tmp_path / "run" / "plots" / name / "density.png").is_file()
        assert saejax.load(tmp_path / "run" / "export" / name)[0]["W_dec"].shape == (64, 16)
    # plots and dashboards of one point drawn again on demand; without --point: one error naming the points
    shutil.rmtree(tmp_path / "run" / "plots" / NAMES[1])
    shutil.rmtree(tmp_path / "run" / "dashboards" / NAMES[1])
    for script, extra in (("plot.py", ["--rows=64"]), ("dashboards.py", ["--latents=2", "--texts=4"])):
        tool = [sys.executable, str(ROOT / "experiments" / script), f"--workdir={tmp_path / 'run'}", *extra]
        redrawn = subprocess.run([*tool, f"--point={NAMES[1]}"], capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert redrawn.returncode == 0, redrawn.stderr[-3000:]
        unnamed = subprocess.run(tool, capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert unnamed.returncode == 1 and f"holds an SAE per hook point ({', '.join(NAMES)})" in unnamed.stderr
    assert (tmp_path / "run" / "plots" / NAMES[1] / "density.png").is_file()
    assert (tmp_path / "run" / "plots" / NAMES[1] / "training.png").is_file()
    assert (tmp_path / "run" / "dashboards" / NAMES[1] / "index.html").is_file()
    bad = subprocess.run([*command[:2], f"--workdir={tmp_path / 'bad'}", *flags, "--config.model.hookpoints=1/resid",
                          "--dry_run"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert bad.returncode == 1 and "model.hookpoints='1/resid': '1/resid' is not LAYER/SITE" in bad.stderr
