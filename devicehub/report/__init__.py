"""The session report a clinic hands over: one self-contained HTML file (or Markdown),
rendered from the record alone. :func:`devicehub.report.files.write_report` writes it."""
