"""Benchmarks for starburst-executor: ``python bench/run.py --help``."""
