"""Benchmarks that print ratios measured in one run; `bench/run_all.py` runs them all into one table.

A package only so that the scripts share `bench.common` (the `Row` every benchmark returns); each
module still runs on its own as `python bench/NAME.py`. Not installed with the project (pyproject's
package list has only `awp*` and `landscape*`).
"""
