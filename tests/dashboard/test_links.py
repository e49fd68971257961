"""Deep links: ``/run?run=3`` and ``/compare?runs=2,3`` open that selection, the address follows the
selection (so a reload keeps it), and an unknown or malformed id in an address is said in a sentence."""

from dashboard_helpers import texts

from dashboard.text import escape_markdown


def _open(app, recorded, page: str, **params):
    at = app(recorded.path)
    for key, value in params.items():
        at.query_params[key] = value
    at.switch_page(page).run()  # the page the address names, in a new session: a link opened, a reload
    assert not at.exception, [e.value for e in at.exception]
    return at


def _param(at, key):
    value = at.query_params.get(key)
    return value[-1] if isinstance(value, list) else value


def test_a_run_link_opens_that_run_and_follows_the_pick(app, recorded):
    base, child = recorded.ids["base"], recorded.ids["child"]
    at = _open(app, recorded, "views/run.py", run=str(base))  # not the newest: that would be the default
    assert at.selectbox(key="run_pick").value == base
    assert at.title[0].value == f"#{base} base"
    at.selectbox(key="run_pick").set_value(child).run()
    assert _param(at, "run") == str(child)


def test_a_compare_link_opens_those_runs_and_follows_the_pick(app, recorded):
    base, child = recorded.ids["base"], recorded.ids["child"]
    at = _open(app, recorded, "views/compare.py", runs=f"{child},{base}")
    assert at.multiselect(key="compare_pick").value == [child, base]
    at.multiselect(key="compare_pick").set_value([base]).run()
    assert _param(at, "runs") == str(base)
    at.multiselect(key="compare_pick").set_value([]).run()
    assert _param(at, "runs") is None


def test_unknown_ids_in_a_compare_link_are_named(app, recorded):
    base = recorded.ids["base"]
    at = _open(app, recorded, "views/compare.py", runs=f"{base},999,abc")
    assert at.multiselect(key="compare_pick").value == [base]
    warning = texts(at, "warning")
    assert "The address asks for runs 999, abc, not in this database" in warning
    assert "showing the others it names" in warning
    assert _param(at, "runs") == str(base)


def test_an_unknown_run_link_says_so_and_shows_the_default(app, recorded):
    at = _open(app, recorded, "views/run.py", run="999")
    assert "The address asks for run 999, not in this database" in texts(at, "warning")
    shown = at.selectbox(key="run_pick").value
    assert shown == recorded.ids["child"]  # the newest run, as without a link
    assert _param(at, "run") == str(shown)
    at = _open(app, recorded, "views/run.py", run="not-a-number")
    assert "run " + escape_markdown("not-a-number") + ", not in this database" in texts(at, "warning")


def test_an_address_without_a_pick_is_left_alone_until_a_pick_is_made(app, recorded):
    # The sidebar opens /compare: writing the default pick into the address added a history entry, and the
    # browser's Back then needed two presses to leave the page.
    at = app(recorded.path)
    at.switch_page("views/compare.py").run()
    assert _param(at, "runs") is None
    at.switch_page("views/runs.py").run()
    at.switch_page("views/compare.py").run()  # back through the sidebar: the same pick, the same address
    assert _param(at, "runs") is None
    base = recorded.ids["base"]
    at.multiselect(key="compare_pick").set_value([base]).run()
    assert _param(at, "runs") == str(base)  # a pick made here: the address follows it


def test_ids_are_written_in_ascii_digits(app, recorded):
    base = recorded.ids["base"]
    arabic = "".join(chr(0x660 + int(d)) for d in str(base))  # int() reads both as base's id
    wide = "".join(chr(0xFF10 + int(d)) for d in str(base))
    for typed in (arabic, wide, "-1"):
        at = _open(app, recorded, "views/run.py", run=typed)
        warning = texts(at, "warning")
        assert f"The address asks for run {escape_markdown(typed)}, not in this database" in warning


def test_a_launch_link_opens_the_form_on_that_source_run_and_follows_the_pick(app, recorded):
    # A reload of /launch used to fall back to the newest run: the address now names the source run.
    base, child = recorded.ids["base"], recorded.ids["child"]
    at = _open(app, recorded, "views/launch.py", source=str(base))
    assert at.selectbox(key="launch_source").value == base
    at.selectbox(key="launch_source").set_value(child).run()
    assert _param(at, "source") == str(child)
    at = _open(app, recorded, "views/launch.py", source="999")
    assert "The address asks for run 999, not in this database" in texts(at, "warning")
