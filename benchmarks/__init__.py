"""`make bench`: speed and memory measurements, outside the installed package (docs/benchmarks.md)."""
