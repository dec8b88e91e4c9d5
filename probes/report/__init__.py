"""The HTML report over a results directory (``probes report``).

Results stay data (``comparison.json``, each result folder); the report renders them as a
static site that opens from disk: :func:`build_report` writes ``index.html`` (the comparison,
controls, plan targets, recommendations, the accuracy plot) and one page per experiment
(metrics with CIs and chance, confusions, per-name views, calibration, forced choice and face
galleries made from the store's images).
"""

from probes.report.experiment import PageOptions
from probes.report.site import SiteReport, build_report

__all__ = ["PageOptions", "SiteReport", "build_report"]
