"""gradwatch dashboard: ``streamlit run dashboard [-- --db PATH]``.

Pages live in ``dashboard/pages``; the modules here are importable without a running Streamlit server:
``downsample`` and ``suggest`` (pure), ``charts`` (plotly figures from DataFrames), ``launch`` (commands and
processes), ``db`` (which database, and friendly errors).
"""

__all__ = ["charts", "db", "downsample", "launch", "suggest"]
