"""Reports: the paper's Tables 1-4 and Figures 1-3 rendered from a results store, beside the paper's own
published numbers (``paper_results.json``), with intervals, reliability flags and provenance."""

from robustarch.report.analysis import DNHA, dnha, newcombe_interval, paper_dnha
from robustarch.report.build import FORMATS, Report, build_report, collect, write
from robustarch.report.explain import ExplainSection, explain_sections
from robustarch.report.paper import paper_value, paper_values
from robustarch.report.tables import Cell, Column, Row, Table, paper_tables, tables_from_results

__all__ = [
    "DNHA",
    "FORMATS",
    "Cell",
    "Column",
    "ExplainSection",
    "Report",
    "Row",
    "Table",
    "build_report",
    "collect",
    "dnha",
    "explain_sections",
    "newcombe_interval",
    "paper_dnha",
    "paper_tables",
    "paper_value",
    "paper_values",
    "tables_from_results",
    "write",
]
