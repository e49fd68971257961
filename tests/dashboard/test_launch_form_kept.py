"""The Launch form keeps what the user chose while it is not on screen: the source run and the typed clip
spec survive a visit to another page, a switch to another strategy and back, and Raw spec → Strategy → Raw
spec (Streamlit drops a widget's value while the widget is not drawn). A number typed out of range is named
as such, not read as 0."""

import pytest
from dashboard_helpers import open_page, texts


@pytest.fixture
def launch(recorded, app):
    # Opened on the older run, "base": the newest run, "child", is what the page fell back to.
    return open_page(app(recorded.path), "views/launch.py", launch_from=recorded.ids["base"])


def _away_and_back(at):
    at.switch_page("views/runs.py").run()
    at.switch_page("views/launch.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _command(at) -> str:
    return "\n".join(c.value for c in at.code)


def test_the_source_run_and_a_typed_raw_spec_survive_another_page(launch, recorded):
    launch.radio(key="clip_mode").set_value("Raw spec").run()
    launch.text_input(key="clip_raw").input("norm:0.125").run()
    _away_and_back(launch)
    assert launch.selectbox(key="launch_source").value == recorded.ids["base"]
    assert launch.radio(key="clip_mode").value == "Raw spec"
    assert launch.text_input(key="clip_raw").value == "norm:0.125"
    command = _command(launch)
    assert f"--parent-run {recorded.ids['base']}" in command and "--clip norm:0.125" in command


def test_a_typed_strategy_value_survives_another_page_and_another_strategy(launch, recorded):
    launch.selectbox(key="clip_strategy").set_value("agc").run()
    launch.text_input(key="clip_agc_l").input("0.05").run()
    launch.selectbox(key="clip_strategy").set_value("norm").run()
    launch.text_input(key="clip_norm_c").input("-2").run()
    launch.selectbox(key="clip_strategy").set_value("value").run()
    launch.selectbox(key="clip_strategy").set_value("norm").run()
    assert launch.text_input(key="clip_norm_c").value == "-2"
    assert "-2" in texts(launch) and launch.button(key="launch_go").disabled
    launch.selectbox(key="clip_strategy").set_value("agc").run()
    assert launch.text_input(key="clip_agc_l").value == "0.05"
    _away_and_back(launch)
    assert launch.selectbox(key="launch_source").value == recorded.ids["base"]
    assert launch.selectbox(key="clip_strategy").value == "agc"
    assert launch.text_input(key="clip_agc_l").value == "0.05"
    assert "--clip agc:0.05" in _command(launch)


def test_raw_then_strategy_then_raw_keeps_the_typed_spec(launch):
    launch.radio(key="clip_mode").set_value("Raw spec").run()
    launch.text_input(key="clip_raw").input("norm:1e-50").run()
    launch.radio(key="clip_mode").set_value("Strategy").run()
    launch.radio(key="clip_mode").set_value("Raw spec").run()
    assert launch.text_input(key="clip_raw").value == "norm:1e-50"


def test_picking_another_source_fills_the_form_from_that_run(launch, recorded):
    launch.radio(key="clip_mode").set_value("Raw spec").run()
    launch.text_input(key="clip_raw").input("norm:0.125").run()
    launch.selectbox(key="launch_source").set_value(recorded.ids["child"]).run()
    # The child was recorded with norm:0.5: its own clipping, not what was typed for the other run.
    assert launch.radio(key="clip_mode").value == "Strategy"
    assert launch.text_input(key="clip_norm_c").value == "0.5"


@pytest.mark.parametrize(
    ("typed", "why"),
    [
        ("1e400", "not a finite number"),
        ("-1e400", "not a finite number"),
        ("nan", "not a finite number"),
        ("1e-400", "too small: it rounds to 0"),  # (no float is that small)
        ("-5e-999", "too small: it rounds to 0"),
    ],
)
def test_a_number_out_of_range_is_named_not_read_as_zero(launch, typed, why):
    launch.selectbox(key="clip_strategy").set_value("norm").run()
    launch.text_input(key="clip_norm_c").input(typed).run()
    message = texts(launch)
    assert f"threshold C: '{typed}' is out of range ({why})" in message
    assert "got 0.0" not in message and launch.button(key="launch_go").disabled


def test_a_number_field_with_text_says_it_is_not_a_number(launch):
    launch.selectbox(key="clip_strategy").set_value("zclip").run()
    launch.text_input(key="clip_zclip_alpha").input("0.9x").run()
    assert "EMA alpha: '0.9x' is not a number" in texts(launch)
    assert launch.button(key="launch_go").disabled
