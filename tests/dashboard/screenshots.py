"""Serve the dashboard for real and look at it with headless Chromium (Playwright, Debian's chromium).

Used by the browser test, and runnable to refresh the README screenshots from real trainer runs:

    .venv/bin/python tests/dashboard/screenshots.py            # writes docs/screenshots/*.png

(run from the repository root; it trains two short keyword runs into a temporary database first).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# url path of each page (st.Page derives it from the file name) and what shows that it has rendered.
PAGES = {
    "runs": "[data-testid='stDataFrame']",
    "run": ".js-plotly-plot",
    "compare": ".js-plotly-plot",
    "launch": "[data-testid='stCode']",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(db: Path, log: Path, timeout: float = 90.0, *, entry: bool = False, cwd: Path = REPO, env=None):
    """``streamlit run dashboard -- --db DB`` on a free port (``entry``: ``python -m dashboard --db DB``, the
    installed package's command); yields the base URL; stops it with SIGTERM."""
    port = free_port()
    options = ["--server.port", str(port), "--server.headless", "true"]
    if entry:
        cmd = [sys.executable, "-m", "dashboard", "--db", str(db), *options]
    else:
        cmd = [sys.executable, "-m", "streamlit", "run", "dashboard", *options, "--", "--db", str(db)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"streamlit did not answer on {url} within {timeout} s:\n{log.read_text()}"
                )
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def capture(url: str, out_dir: Path, pages=PAGES, timeout_ms=90_000, tabs=None, height=1000, settle_ms=1500):
    """Open each page, wait until it has rendered, save ``<page>.png``; returns per page the number of
    plotly charts, the text of any Streamlit error or exception shown and the addresses the browser asked
    for outside ``url`` (the dashboard must work offline). ``tabs`` maps a page to tab labels to click and
    save as ``<page>-<tab>.png`` too."""
    from urllib.parse import urlsplit

    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    seen = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            offsite = []

            def asked(request):
                if urlsplit(request.url).netloc not in ("", urlsplit(url).netloc):  # ("": data: URLs)
                    offsite.append(request.url)

            page.on("request", asked)
            for name, ready in pages.items():
                page.goto(f"{url}/{name}" if name != "runs" else url, wait_until="domcontentloaded")
                page.wait_for_selector(ready, timeout=timeout_ms)
                if ready == ".js-plotly-plot":
                    # Plotly draws asynchronously: wait for the first trace's graphics, not just the div.
                    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=timeout_ms)
                page.wait_for_timeout(
                    settle_ms
                )  # let the remaining charts and fonts settle before the picture
                page.screenshot(path=str(out_dir / f"{name}.png"), full_page=True)
                problems = page.locator("[data-testid='stException'], [data-testid='stAlertContentError']")
                seen[name] = {
                    "plots": page.locator(".js-plotly-plot").count(),
                    "errors": [problems.nth(i).inner_text() for i in range(problems.count())],
                    "offsite": list(offsite),
                }
                offsite.clear()
                for tab in (tabs or {}).get(name, ()):
                    page.get_by_role("tab", name=tab).click()
                    page.wait_for_timeout(2000)
                    slug = tab.lower().replace(" ", "-").replace("&", "and")
                    page.screenshot(path=str(out_dir / f"{name}-{slug}.png"), full_page=True)
        finally:
            browser.close()
    return seen


def _record_showcase(db: Path, cache: Path) -> None:
    """Two short real trainer runs: no clipping, then its relaunch with norm:1.0."""
    common = [
        "--corpus-size",
        "small",
        "--epochs",
        "1",
        "--cache-dir",
        str(cache),
        "--db",
        str(db),
        "--quiet",
    ]
    subprocess.run([sys.executable, "-m", "trainer", *common, "--run", "kws-noclip", "--lr", "3e-3"],
                   cwd=REPO, check=True)  # fmt: skip
    subprocess.run([sys.executable, "-m", "trainer", *common, "--run", "kws-norm-1.0", "--lr", "3e-3",
                    "--clip", "norm:1.0", "--parent-run", "1"], cwd=REPO, check=True)  # fmt: skip


def main() -> None:
    out = REPO / "docs" / "screenshots"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        db = Path(os.environ.get("GRADWATCH_SCREENSHOT_DB") or tmp / "gradwatch.db")
        if not db.exists():
            _record_showcase(db, tmp / "corpus")
        with serve(db, tmp / "streamlit.log") as url:
            tabs = {"run": ["Layers", "Heatmap", "Gradient flow", "Suggested threshold"]}
            for name, info in capture(url, out, tabs=tabs, height=1300).items():
                print(f"{out / (name + '.png')}: {info['plots']} charts, errors: {info['errors'] or 'none'}")


if __name__ == "__main__":
    main()
