"""``python -m dashboard`` / ``gradwatch-dashboard``: the dashboard started from anywhere, as an installed
package is (``streamlit run dashboard`` names a folder of the checkout)."""

import json
import os
import sys

import pytest
from screenshots import CHROMIUM, CHROMIUM_ARGS, serve

import dashboard


def test_the_command_runs_streamlit_on_the_package_folder():
    from dashboard.__main__ import command

    cmd = command(["--db", "my runs/x.db", "--server.port", "8600"])
    folder = os.path.dirname(os.path.abspath(dashboard.__file__))
    assert cmd == [sys.executable, "-P", "-m", "streamlit", "run", folder, "--server.port", "8600",
                   "--", "--db", "my runs/x.db"]  # fmt: skip
    assert command([])[-1] == folder  # no --db: $GRADWATCH_DB or ./gradwatch.db, as `streamlit run`


@pytest.mark.parametrize("argv, needle", [(["runs.db"], "--db runs.db"), (["--db", ""], "--db ''")])
def test_a_path_without_db_or_an_empty_one_is_refused(argv, needle, capsys):
    from dashboard.__main__ import command

    with pytest.raises(SystemExit) as exit_:
        command(argv)
    assert exit_.value.code == 2 and needle in capsys.readouterr().err


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: install it with `make browser`"
)
def test_python_m_dashboard_serves_the_given_database_from_another_folder(recorded, tmp_path):
    from playwright.sync_api import sync_playwright

    elsewhere = tmp_path / "some project"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GRADWATCH_DB"}
    with serve(recorded.path, tmp_path / "streamlit.log", entry=True, cwd=elsewhere, env=env) as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            sidebar = page.locator("section[data-testid='stSidebar']")
            sidebar.get_by_text(str(recorded.path)).wait_for(timeout=60_000)
            # its runs listed (the table's cells are drawn on a canvas, kept hidden in the page for a11y)
            page.get_by_text("base", exact=True).first.wait_for(state="attached", timeout=30_000)
            browser.close()
    assert not (elsewhere / "gradwatch.db").exists()


@pytest.mark.parametrize("db", ["my runs/x.db", 'cost$5 "q" `x`.db'])
def test_make_dashboard_passes_the_database_path_as_typed(tmp_path, db):
    # `make dashboard DB=...`: make expanded $5 away and the shell split or ran the rest.
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "streamlit"  # prints the arguments it was given
    fake.write_text(f"#!{sys.executable}\nimport json, sys; print(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    (venv / ".installed").touch()  # (newer than the lock file and pyproject.toml: nothing to install)
    out = subprocess.run(
        ["make", "-s", "-C", repo, "dashboard", f"VENV={venv}", f"DB={db}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["run", "dashboard", "--", "--db", db]
    assert not (tmp_path / "x").exists()
