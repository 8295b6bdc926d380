"""statek-bus benchmarks: ``python -m bench [--quick] [name ...]`` prints one table per benchmark.

Each module ``bench/<name>.py`` exposes ``async def run(quick: bool)`` returning one table's rows
(``list[dict]``) or several tables (title → rows). Every table has a ratio column against a floor or
peer measured in the same run (e.g. a service against raw KV), headed ``x <floor> (higher = faster)``,
``(lower = faster)`` or ``(lower = cheaper)`` (:func:`bench.common.ratio`), because absolute figures
on a shared 2-core machine are noisy; :func:`bench.common.print_table` names a table without one on
stderr. Tables go to stdout; progress lines (:func:`bench.common.progress`) and service logs stay
out of them. Benchmarks are never tests: nothing asserts a time.
"""
