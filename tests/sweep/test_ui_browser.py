"""Browsing a finished sweep in the MLflow UI, checked in a real (headless) Chromium.

A tiny sweep (2 trials x 2 epochs on synthetic data, with the analysis) runs through `sweep run`
on a real local Ray and a real sqlite store; `sweep ui SPEC` serves it and prints the URL of the
sweep's experiment page; Chromium renders each page (`--dump-dom` after the page's requests have
settled, `--virtual-time-budget`) and the checks read the rendered DOM and the server's access log:

- the experiment page opens in the training view ("Runs"/"Models" side nav, no GenAI "Evaluation
  runs"), names the sweep in its description, and lists every trial key as a link to its run;
- a trial's page (followed from that link) shows its description, its dataset and its metrics
  with the logged values, and its pr_curve.png artifact is fetched (200) and displayed;
- the parent's page names the sweep and fetches the analysis figures its description shows, and
  the figure links in it open the figure in the parent's artifacts.

A screenshot of each page is saved under the test's tmp dir. Needs Debian's `chromium` (`.ci/run`
installs it); skipped, saying so, when no Chromium is on the PATH.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.sweeps import SWEEP, sweep_cli, sweep_env, tiny_spec, write_spec
from tests.trainables.test_tracking_server import wait_healthy

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

NAME = "ui-browse"
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SCREENS_ENV = "SWEEP_UI_SCREENSHOTS"  # also copy the screenshots there (for a human to look at)


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUMS)), None)


# --------------------------------------------------------------------------- the DOM


class Page(HTMLParser):
    """The rendered DOM, reduced to what the checks read: links (href, text), images and text."""

    def __init__(self, html: str):
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.images: list[dict[str, str]] = []
        self.chunks: list[str] = []
        self._open: list[list[str]] = []
        self.html = html
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "a":
            self._open.append([attrs.get("href", ""), ""])
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag == "a" and self._open:
            href, text = self._open.pop()
            self.links.append((href, text.strip()))

    def handle_data(self, data):
        self.chunks.append(data)
        for link in self._open:
            link[1] += data

    @property
    def text(self) -> str:
        # Joined as rendered inline ("**key**: words" stays "key: words"), whitespace collapsed.
        return " ".join("".join(self.chunks).split())

    def hrefs(self, text: str) -> list[str]:
        return [href for href, label in self.links if label == text]


def render(chromium: str, url: str, screenshot: Path, profile: Path, *, until) -> Page:
    """Load ``url`` in headless Chromium, wait until its requests settle, and return the DOM;
    the screenshot is taken in the same load. Loads again (at most 4 times) until ``until(page)``
    holds, since the UI may still be fetching when the virtual-time budget ends."""
    page = None
    for _ in range(4):
        out = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",  # root in CI containers
                "--disable-gpu",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",  # fresh profile: the UI's default (GenAI) mode
                "--window-size=1600,1000",
                "--virtual-time-budget=20000",
                f"--screenshot={screenshot}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        page = Page(out.stdout)
        if until(page):
            return page
    return page


# --------------------------------------------------------------------------- the sweep and the UI


def _spec(tmp: Path) -> Path:
    spec = tiny_spec(
        NAME,
        tmp,
        protocol={"epochs": 2, "early_stop_warmup": 2},
        failure={"max_retries": 0},
        analyze=True,
    )
    return write_spec(tmp, spec)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if found is None:
        pytest.skip(
            "no Chromium on the PATH (tried " + ", ".join(CHROMIUMS) + "); on Debian: "
            "apt-get install chromium (.ci/run installs it when it can)"
        )
    return found


@pytest.fixture(scope="module")
def served(chromium, tmp_path_factory):
    """The finished tiny sweep, `sweep ui SPEC` serving it, and what it printed."""
    tmp = tmp_path_factory.mktemp("ui_browser")
    spec = _spec(tmp)
    run = sweep_cli("run", str(spec), env=sweep_env(tmp), cwd=tmp, timeout=600)
    assert run.returncode == 0, f"sweep run -> {run.returncode}\n{run.stdout}\n{run.stderr}"
    port = free_port()
    log = tmp / "ui.log"
    with open(log, "w") as out:
        ui = subprocess.Popen(
            [*SWEEP, "ui", str(spec), "--port", str(port)],
            env=sweep_env(tmp),
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = _wait_for_ui(log, ui, port)
        yield {"tmp": tmp, "url": url, "log": log, "uri": f"sqlite:///{tmp / 'mlflow.db'}"}
    finally:
        # Stopping gracefully is test_tracking_server's subject; here the groups just go.
        banner = re.search(r"server pid (\d+)", log.read_text())
        for pid in filter(None, (ui.pid, int(banner.group(1)) if banner else None)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        ui.wait(timeout=30)


def _wait_for_ui(log: Path, ui: subprocess.Popen, port: int) -> str:
    wait_healthy(f"http://127.0.0.1:{port}", ui, log)
    found = re.search(rf"^Sweep {NAME}: (\S+)$", log.read_text(), re.MULTILINE)
    assert found, f"sweep ui printed no experiment page URL:\n{log.read_text()[:2000]}"
    return found.group(1)


def _fetched(log: Path, path: str, run_id: str) -> bool:
    """Whether the server answered 200 to the UI's request for ``path`` of run ``run_id``."""
    text = unescape(log.read_text())
    quoted = urllib.request.quote(path, safe="")
    return any(f'path={p}&run_uuid={run_id} HTTP/1.1" 200' in text for p in {path, quoted})


def _shot(served, name: str) -> Path:
    path = served["tmp"] / "screens" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    return path


def _keep_screenshots(served) -> None:
    target = os.environ.get(SCREENS_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in (served["tmp"] / "screens").glob("*.png"):
            shutil.copy(shot, Path(target) / shot.name)


# --------------------------------------------------------------------------- the test


def test_a_finished_sweep_browses_in_chromium(chromium, served):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(served["uri"])
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id])
    trials = {r.data.tags["trial_key"]: r for r in runs if "trial_key" in r.data.tags}
    parent = next(r for r in runs if r.data.tags.get("sweep_parent") == "true")
    assert sorted(trials) == ["cnn-tiny-baseline-s1-holdout", "cnn-tiny-nvfp4-s1-holdout"]
    # One git sha tag, parent and trials alike (trainables.mlflow_schema.short_sha).
    assert {r.data.tags["git_sha"] for r in runs} == {parent.data.tags["git_sha"]}
    eid, profile = experiment.experiment_id, served["tmp"] / "chromium-profile"
    assert served["url"].startswith("http://127.0.0.1:") and f"/experiments/{eid}/" in served["url"]

    # The experiment page: the training view, the sweep's description, every trial key.
    page = render(
        chromium, served["url"], _shot(served, "1-experiment"), profile,
        until=lambda p: all(p.hrefs(k) for k in trials),
    )  # fmt: skip
    runs_nav = [h for h in page.hrefs("Runs") if f"/experiments/{eid}/runs" in h]
    assert runs_nav and "workflowType=machine_learning" in runs_nav[0], page.links[:20]
    assert page.hrefs("Models") and not page.hrefs("Evaluation runs")  # not the GenAI layout
    assert f"Sweep {NAME}" in page.text
    for key, run in trials.items():
        assert f"#/experiments/{eid}/runs/{run.info.run_id}" in page.hrefs(key), key

    # A trial's page, through the link the runs table gives it.
    key = "cnn-tiny-nvfp4-s1-holdout"
    run = trials[key]
    url = served["url"].split("#")[0] + page.hrefs(key)[0]
    page = render(
        chromium, url, _shot(served, "2-trial"), profile,
        until=lambda p: "test_auprc" in {label for _, label in p.links},
    )  # fmt: skip
    metric_links = {label for href, label in page.links if href.endswith("/model-metrics")}
    assert {"test_auprc", "val_auprc", "best_epoch", "train_loss"} <= metric_links
    shown = repr(run.data.metrics["test_auprc"])
    assert shown in page.text.split("test_auprc", 1)[1][:200]  # the logged value, in its row
    assert f"{key}: CNN (U-Net) at scale tiny, trained with NVFP4 Full" in page.text
    dataset = run.inputs.dataset_inputs[0].dataset
    assert f"{dataset.name} ({dataset.digest})" in page.text

    page = render(
        chromium, f"{url}/artifacts/pr_curve.png", _shot(served, "3-trial-pr-curve"), profile,
        until=lambda p: any(i.get("alt") == "pr_curve.png" for i in p.images),
    )  # fmt: skip
    image = next(i for i in page.images if i.get("alt") == "pr_curve.png")
    assert image["src"].startswith("blob:")  # the bytes arrived and are displayed
    assert _fetched(served["log"], "pr_curve.png", run.info.run_id)

    # The parent's page: its description names the sweep and shows the analysis figures.
    parent_url = served["url"].split("#")[0] + f"#/experiments/{eid}/runs/{parent.info.run_id}"
    page = render(
        chromium, parent_url, _shot(served, "4-parent"), profile,
        until=lambda p: f"Sweep {NAME}" in p.text,
    )  # fmt: skip
    assert f"Sweep {NAME}" in page.text and "2 of 2 trials finished" in page.text
    figures = [i["src"] for i in page.images if "analysis%2Ffigures" in i.get("src", "")]
    assert len(figures) >= 3, page.images
    for figure in ("fig4_auprc_vs_scale.png", "fig6_normalized_auprc.png"):
        assert _fetched(served["log"], f"analysis/figures/{figure}", parent.info.run_id)
    figure = "fig6_normalized_auprc.png"  # and one figure through the link the description gives
    link = next(h for h, label in page.links if label == figure)
    page = render(
        chromium, served["url"].split("#")[0] + link, _shot(served, "5-parent-figure"), profile,
        until=lambda p: any(i.get("alt") == f"analysis/figures/{figure}" for i in p.images),
    )  # fmt: skip
    shown = next(i for i in page.images if i.get("alt") == f"analysis/figures/{figure}")
    assert shown["src"].startswith("blob:")

    _keep_screenshots(served)
