"""gradwatch dashboard: ``streamlit run dashboard [-- --db PATH]``.

Pages live in ``dashboard/views`` (not ``pages/``: that folder name switches Streamlit to its older
multipage mode, which bypasses ``st.navigation``). The modules here import without a running server:
``downsample`` and ``suggest`` (pure), ``charts`` (plotly figures from DataFrames), ``clipform`` (the clip
form's spec builder), ``options`` (the trainer options of the Launch form and their rules), ``launch``
(the commands a launch runs), ``commands`` (whether a recorded command can run again), ``jobs`` (the
processes started, their logs), ``stopping`` (SIGTERM and the stop request), ``db`` (which database,
friendly errors), ``text`` (recorded text made safe for markdown and file names), ``summary`` (the runs
table), ``data`` and ``state`` (store reads and session state), ``formstate``, ``launchform`` and
``jobpanel`` (the Launch page's form memory, inputs and job list); the last five need Streamlit.
"""

__all__ = [
    "charts",
    "clipform",
    "commands",
    "data",
    "db",
    "downsample",
    "formstate",
    "jobpanel",
    "jobs",
    "launch",
    "launchform",
    "options",
    "state",
    "stopping",
    "summary",
    "suggest",
    "text",
]
