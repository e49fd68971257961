"""The real thing: ``streamlit run dashboard -- --db DB`` in a subprocess, opened by headless Chromium."""

import os

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
        seen = capture(url, shots)
    for name, info in seen.items():
        assert (shots / f"{name}.png").stat().st_size > 10_000, name
        assert info["errors"] == [] or name == "run", (name, info["errors"])
    # The Run page draws its charts (global norm, layers, heatmap, flow, loss, metrics) in tabs.
    assert seen["run"]["plots"] >= 1 and seen["compare"]["plots"] >= 2
    # The recorded run has a NaN step: the Run page reports it as an error box, and nothing else.
    assert all("non-finite" in e for e in seen["run"]["errors"])
