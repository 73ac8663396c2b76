"""The celery-pools benchmark: ``python -m bench`` (``--help`` for options).

Runs against private Redis servers and real ``celery worker`` subprocesses it starts itself;
prints a table, writes ``bench/results/results.json`` and draws ``bench/results/concurrency.png``.
See ``docs/benchmarks.md`` for what each figure means and how it is measured.
"""
