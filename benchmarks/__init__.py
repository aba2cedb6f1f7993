"""Command-line benchmarks and demos for PART: ``python -m benchmarks --help``."""
