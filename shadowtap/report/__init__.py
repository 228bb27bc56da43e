"""The report of a recorded run: built from the data directory, printed as tables or written as HTML."""

from shadowtap.report.html import write_html
from shadowtap.report.model import Report, build_report
from shadowtap.report.text import print_report

__all__ = ["Report", "build_report", "print_report", "write_html"]
