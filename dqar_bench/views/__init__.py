"""Views over records: terminal and markdown tables, plots, `compare`, `plan`, the HTML report.

Imports: every layer below `run`.
"""
