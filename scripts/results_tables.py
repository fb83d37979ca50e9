"""Print the generated results document (every registered study's tables from the records) to stdout.

    python scripts/results_tables.py [results]

The same text ``python -m serlib results`` writes to docs/RESULTS.md (:func:`serlib.report.results_markdown`).
"""

from __future__ import annotations

import sys

from serlib.report import results_markdown

if __name__ == "__main__":
    print(results_markdown(*sys.argv[1:2]))
