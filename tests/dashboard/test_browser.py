"""The real thing: ``streamlit run dashboard -- --db DB`` in a subprocess, opened by headless Chromium."""

import contextlib
import os
import re
import time

import pytest
from screenshots import CHROMIUM, capture, serve

pytestmark = pytest.mark.browser


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: install it with `make browser`"
)
def test_every_page_renders_in_chromium(recorded, tmp_path):
    shots = tmp_path / "shots"
    with serve(recorded.path, tmp_path / "streamlit.log") as url:
        seen = capture(url, shots, settle_ms=300)
    for name, info in seen.items():
        assert (shots / f"{name}.png").stat().st_size > 10_000, name
        assert info["errors"] == [] or name == "run", (name, info["errors"])
        assert info["offsite"] == [], (name, info["offsite"])  # e.g. a favicon from fonts.gstatic.com
    # The Run page draws its charts (global norm, layers, heatmap, flow, loss, metrics) in tabs.
    assert seen["run"]["plots"] >= 1 and seen["compare"]["plots"] >= 2
    # The recorded run has a NaN step: the Run page reports it as an error box, and nothing else.
    assert all("non-finite" in e for e in seen["run"]["errors"])


# A training process stand-in that records a step every 0.1 s through the real store writer, and finishes
# the run when the file argv[2] appears.
WRITER = """
import math, os, sys, time
from tracker.store import Store
store = Store.open(sys.argv[1], create=True)
run = store.create_run(name="live", clip="norm:1.0")
store.add_layers(run, [dict(id=i, name=f"block{i}.weight", shape=[8]) for i in range(4)])
writer = store.writer(run, heartbeat_every=0.5)
for step in range(100_000):
    if os.path.exists(sys.argv[2]):
        break
    norms = [1.0 + 0.1 * i + 0.05 * math.sin(step / 5) for i in range(4)]
    total = math.sqrt(sum(n * n for n in norms))
    writer.add_step(step=step, norms=norms, total_norm=total, loss=1 / (1 + step))
    writer.flush()
    time.sleep(0.1)
writer.close(status="finished")
store.close()
"""


@contextlib.contextmanager
def _live_run_page(tmp_path):
    """The Run page in Chromium, of a run that WRITER records live; yields (page, the file that, once
    touched, finishes the run)."""
    import subprocess
    import sys

    from playwright.sync_api import sync_playwright
    from screenshots import CHROMIUM_ARGS, REPO

    db, finish = tmp_path / "gradwatch.db", tmp_path / "finish"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(finish)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with serve(db, tmp_path / "streamlit.log") as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/run")
            yield page, finish
            browser.close()
    finally:
        finish.touch()
        writer.kill()
        writer.wait()


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: install it with `make browser`"
)
def test_the_run_page_follows_a_running_run(tmp_path):
    with _live_run_page(tmp_path) as (page, finish):
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=90_000)
        steps = page.locator("[data-testid='stMetric']", has_text="Steps recorded")
        steps = steps.locator("[data-testid='stMetricValue']")
        first = int(steps.inner_text().replace(",", ""))
        # The live fragment re-renders by itself (no reload, no click) with the steps written since.
        page.wait_for_function(
            "([el, n]) => parseInt(el.innerText.replace(/,/g, '')) > n",
            arg=[steps.element_handle(), first],
            timeout=60_000,
        )
        assert page.locator("[data-testid='stException']").count() == 0
        page.screenshot(path=str(tmp_path / "live.png"))
        # The status line and its Stop button are live too: once the run finishes, they say so.
        stop = page.get_by_role("button", name="Stop this run (SIGTERM)")
        stop.wait_for(timeout=60_000)  # (its fragment may render after the metrics' under load)
        assert stop.count() == 1 and page.get_by_text("status running").count() == 1
        finish.touch()
        page.get_by_text("status finished").wait_for(timeout=60_000)
        assert stop.count() == 0


# The keyboard focus is on the Gradient flow tab's step slider (its thumb is a range input).
ON_STEP = "() => document.activeElement?.matches(\"[data-testid='stSlider'] input[type='range']\") === true"
# The number a selector's element shows (NaN when there is none).
SHOWN = "s => parseInt((document.querySelector(s)?.innerText ?? '').replace(/,/g, ''))"


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: install it with `make browser`"
)
def test_the_flow_step_keeps_the_keyboard_focus_while_the_run_grows(tmp_path):
    # A widget that Streamlit gives a new identity is recreated in the browser, and the focus on it lost:
    # moving the step with the arrow keys while the run trains must not stop at each live render.
    with _live_run_page(tmp_path) as (page, _finish):
        page.get_by_role("tab", name="Gradient flow").click(timeout=90_000)
        thumb = "[data-testid='stSliderThumbValue']"
        step = page.locator("[data-testid='stSlider'] input[type='range']")
        step.wait_for(state="attached", timeout=90_000)  # (drawn off screen: a range input is hidden)
        recorded = page.locator("[data-testid='stMetric']", has_text="Steps recorded")
        recorded = recorded.locator("[data-testid='stMetricValue']")

        def live_render() -> int:
            """Wait for a live render with steps written since the last; the steps recorded."""
            n = int(recorded.inner_text().replace(",", ""))
            page.wait_for_function(
                "([el, n]) => parseInt(el.innerText.replace(/,/g, '')) > n",
                arg=[recorded.element_handle(), n],
                timeout=60_000,
            )
            return int(recorded.inner_text().replace(",", ""))

        def shown() -> int:
            return page.evaluate(SHOWN, thumb)

        step.focus()
        assert page.evaluate(ON_STEP)
        first = shown()
        live_render()
        # Not picked: it follows the run, and the focus stays on it.
        page.wait_for_function(f"() => ({SHOWN})({thumb!r}) > {first}", timeout=60_000)
        assert page.evaluate(ON_STEP), "the focus left the step slider at a live render"
        page.keyboard.press("ArrowLeft")  # picked: one step back from the latest
        n = live_render()
        live_render()  # (a render in flight when the key was pressed may have followed the run once more)
        picked = shown()
        assert picked < n - 1  # it no longer follows the run
        live_render()
        assert shown() == picked and page.evaluate(ON_STEP)  # kept, and still focused
        page.keyboard.press("ArrowLeft")
        page.wait_for_function(f"() => ({SHOWN})({thumb!r}) === {picked - 1}", timeout=60_000)
        live_render()
        assert shown() == picked - 1 and page.evaluate(ON_STEP)
        # The chart follows the pick (drawn anew, maybe a render after the control moved: looked up by
        # selector each time, not through a handle to the chart it replaces).
        page.wait_for_function(
            "want => document.querySelector('.js-plotly-plot .gtitle')?.textContent === want",
            arg=f"Gradient flow at step {picked - 1}",
            timeout=60_000,
        )
        assert page.locator("[data-testid='stException']").count() == 0


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: install it with `make browser`"
)
def test_select_a_row_and_compare_in_chromium(recorded, tmp_path):
    from playwright.sync_api import sync_playwright
    from screenshots import CHROMIUM_ARGS

    with serve(recorded.path, tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        grid = page.locator("[data-testid='stDataFrame']")
        grid.wait_for(timeout=90_000)
        page.wait_for_timeout(1000)
        box = grid.bounding_box()
        # The grid is a canvas: tick the first row's selection box (header row 35 px, rows 35 px).
        page.mouse.click(box["x"] + 15, box["y"] + 35 + 17)
        compare = page.get_by_role("button", name="Compare selected")
        page.wait_for_function("b => !b.disabled", arg=compare.element_handle(), timeout=30_000)
        compare.click()
        page.wait_for_url(re.compile(r".*/compare(\?.*)?$"), timeout=60_000)  # (?runs=…: the pick)
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=90_000)
        picked = page.locator("[data-testid='stMultiSelect']").first.inner_text()
        browser.close()
    # Newest first: row 0 is "child"; its parent is added by lineage, not picked.
    assert f"#{recorded.ids['child']} child" in picked and "base" not in picked


# Names with Markdown, LaTeX, Streamlit directives and HTML in them.
PARENT_NAME = "`base` *x* <b>y</b>"
CHILD_NAME = "$a$ **b** :red[c] _d_ [e](f) # g \\"


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: install it with `make browser`"
)
def test_run_names_are_shown_as_typed(tmp_path):
    from playwright.sync_api import sync_playwright
    from screenshots import CHROMIUM_ARGS

    from tracker.store import Store

    db = tmp_path / "gradwatch.db"
    with Store.open(db, create=True) as store:
        parent = store.create_run(name=PARENT_NAME)
        store.writer(parent).close()
        child = store.create_run(name=CHILD_NAME, parent_id=parent)
        writer = store.writer(child)
        writer.add_step(step=0, norms=[], total_norm=1.0)
        writer.close(status="failed", error="ValueError: *bad* $x$")
    with serve(db, tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/run")  # the newest run: the child
        title = page.locator("h1 [data-heading-text]").first
        title.wait_for(timeout=90_000)
        main = page.locator("[data-testid='stMain']")
        main.get_by_text("relaunch of").wait_for(timeout=60_000)
        main.get_by_text("The run failed").wait_for(timeout=60_000)  # (rendered after the header)
        heading, text = title.inner_text(), main.inner_text()
        rendered = main.locator(
            ".katex, h1 strong, h1 em, h1 code, [data-testid='stMarkdownContainer'] em"
        ).count()
        browser.close()
    assert heading == f"#{child} {CHILD_NAME}"
    assert f"relaunch of #{parent} {PARENT_NAME}" in text
    assert "The run failed: ValueError: *bad* $x$" in text
    assert rendered == 0  # no formula, no emphasis, no code made from a name


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: install it with `make browser`"
)
def test_a_failed_jobs_error_can_be_read_without_scrolling(tmp_path):
    import sys

    from playwright.sync_api import sync_playwright
    from screenshots import CHROMIUM_ARGS

    from tracker.store import Store

    reason = "RuntimeError: " + " ".join(f"word{i}" for i in range(60)) + " END"  # wider than the page
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "train.py").write_text(f"raise SystemExit({reason!r})\n")
    db = tmp_path / "gradwatch.db"
    with Store.open(db, create=True) as store:
        run = store.create_run(
            name="mine", argv=["train.py"], cwd=str(tmp_path / "proj"), python=sys.executable
        )
        store.writer(run).close(status="finished")
    with serve(db, tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 1600})
        page.goto(f"{url}/launch")
        page.get_by_role("button", name="Launch", exact=True).click(timeout=90_000)
        alert = page.locator("[data-testid='stAlert']", has_text="Exited with code 1")
        alert.wait_for(timeout=60_000)
        message = alert.inner_text()
        log = page.locator("[data-testid='stCode'] pre", has_text="END").last
        widths = log.evaluate("el => [el.scrollWidth, el.clientWidth]")
        page.screenshot(path=str(tmp_path / "failed-job.png"), full_page=True)
        browser.close()
    assert reason in " ".join(message.split())  # the whole error in the message, wrapped
    assert widths[0] <= widths[1] + 1, widths  # and the log box wraps: nothing hidden to the right


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: install it with `make browser`"
)
def test_links_and_the_launch_form_survive_navigation_and_reload(recorded, tmp_path):
    from playwright.sync_api import sync_playwright
    from screenshots import CHROMIUM_ARGS

    base, child = recorded.ids["base"], recorded.ids["child"]  # child is the newest: every page's default
    with serve(recorded.path, tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        main = page.locator("[data-testid='stMain']")

        # A link to a run opens it; the address follows another pick, and a reload keeps that one.
        page.goto(f"{url}/run?run={base}")
        page.locator("h1", has_text=f"#{base} base").wait_for(timeout=90_000)
        page.goto(f"{url}/compare?runs={child}")
        picked = page.locator("[data-testid='stMultiSelect']").first
        picked.get_by_text(f"#{child} child").wait_for(timeout=90_000)
        assert "base" not in picked.inner_text()  # base is added by lineage, not picked
        page.goto(f"{url}/compare?runs={base},999")
        main.get_by_text("The address asks for run 999").wait_for(timeout=90_000)
        page.reload()
        picked.get_by_text(f"#{base} base").wait_for(timeout=90_000)

        # The Launch form: the source run and a typed spec survive the sidebar and the browser's Back.
        page.goto(f"{url}/launch")
        source = page.get_by_role("combobox", name="Start from run")
        source.wait_for(timeout=90_000)
        source.click()
        page.get_by_role("option", name=f"#{base} base").click()
        # The form refills from the new source in that rerun: a click on Raw spec before it ends is undone.
        page.locator("[data-testid='stCode']", has_text=f"--parent-run {base}").first.wait_for(timeout=90_000)
        page.get_by_text("Raw spec", exact=True).click()
        spec = page.locator("[data-testid='stTextInput']", has_text="Clip spec").locator("input")
        spec.wait_for(timeout=90_000)  # (the rerun the radio button starts: slow on a busy machine)
        spec.fill("norm:0.125")
        spec.press("Enter")
        command = page.locator("[data-testid='stCode']", has_text="--clip norm:0.125").first
        command.wait_for(timeout=60_000)
        page.locator("[data-testid='stSidebar']").get_by_role("link", name="Runs").click()
        page.locator("[data-testid='stDataFrame']").wait_for(timeout=60_000)
        page.go_back()
        command.wait_for(timeout=60_000)
        shown_command, typed = command.inner_text(), spec.input_value()
        browser.close()
    # Still from base (not the newest run, child) and with the typed spec.
    assert f"--parent-run {base}" in shown_command and typed == "norm:0.125"
