"""The report's document model now lives in `analysis.tables` (shared with other rooms' reports); kept as an alias."""
from analysis.tables import *  # noqa: F401,F403
from analysis.tables import attempt, inline, markdown_table, numeric_columns, render_html, render_markdown  # noqa: F401
