"""Study reports: every slice of a CT series described, the findings gathered over slices, shown where.

Reading order: :mod:`series` (inputs into series), :mod:`describe` (batched, resumable description),
:mod:`grouping` (slices that state the same finding into one finding), :mod:`report` (study.json,
report.md, the strip plot), :mod:`run` (the whole flow, what ``ctscribe study`` calls).
"""
