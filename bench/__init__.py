"""statek-bus benchmarks: ``python -m bench [--quick] [name ...]`` prints one table per benchmark.

Each module ``bench/<name>.py`` exposes ``async def run(quick: bool) -> list[dict]``; every
table carries ratios measured in the same run (e.g. a service against raw KV), because absolute
figures on a shared 2-core machine are noisy. Benchmarks are never tests: nothing asserts a time.
"""
