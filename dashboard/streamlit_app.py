"""gradwatch dashboard entry point: ``streamlit run dashboard [-- --db PATH]``.

Registers the four pages with ``st.navigation`` and turns any store error raised while a page renders (a
corrupt, foreign, too-new or locked database) into a message with how to fix it, never a traceback.
"""

import streamlit as st

from dashboard import state
from dashboard.text import code_span
from tracker.store import StoreError

# An emoji favicon is made in the page (a data: URL); a ":material/...:" one is fetched from
# fonts.gstatic.com, which fails offline. (The pages' own :material: icons come with Streamlit's own font.)
st.set_page_config(page_title="gradwatch", page_icon="📈", layout="wide")

pages = [
    st.Page("views/runs.py", title="Runs", icon=":material/table_rows:", default=True),
    st.Page("views/run.py", title="Run", icon=":material/monitoring:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("views/launch.py", title="Launch", icon=":material/rocket_launch:"),
]
page = st.navigation(pages)
st.sidebar.caption(f"Database: {code_span(state.db_path())}")

try:
    page.run()
except StoreError as exc:
    state.show_store_error(exc)
