"""Reports: the paper's Tables 1-4 and Figures 1-3 rendered from a results store, beside the paper's own
published numbers (``paper_results.json``), with intervals, reliability flags and provenance.

The names are imported lazily: the paper's numbers (``paper_value(s)``) need neither numpy nor matplotlib.
"""

from __future__ import annotations

from robustarch.lazy import lazy_exports

# public name -> the submodule that defines it, imported when the name is first read
_EXPORTS = {
    "DNHA": "analysis",
    "ExplainSection": "explain",
    "explain_sections": "explain",
    "dnha": "analysis",
    "newcombe_interval": "analysis",
    "paper_dnha": "analysis",
    "FORMATS": "build",
    "Report": "build",
    "build_report": "build",
    "collect": "build",
    "write": "build",
    "paper_value": "paper",
    "paper_values": "paper",
    "Cell": "tables",
    "Column": "tables",
    "Row": "tables",
    "Table": "tables",
    "paper_tables": "tables",
    "tables_from_results": "tables",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
