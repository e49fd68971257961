"""gradwatch dashboard: ``streamlit run dashboard [-- --db PATH]``.

Pages live in ``dashboard/views`` (not ``pages/``: that folder name switches Streamlit to its older
multipage mode, which bypasses ``st.navigation``). The modules here import without a running server:
``downsample`` and ``suggest`` (pure), ``charts`` (plotly figures from DataFrames), ``clipform`` (the clip
form's spec builder), ``options`` (the trainer options of the Launch form and their rules), ``launch``
(commands and processes), ``db`` (which database, friendly errors), ``text`` (recorded text made safe for
markdown), ``summary`` (the runs table), ``data`` and ``state`` (store reads and session state, need
Streamlit).
"""

__all__ = [
    "charts",
    "clipform",
    "data",
    "db",
    "downsample",
    "launch",
    "options",
    "state",
    "summary",
    "suggest",
    "text",
]
