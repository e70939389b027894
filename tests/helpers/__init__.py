"""Code the tests and benchmarks share (servers, photos, tiny models, throttling, a local SLURM cluster); no tests
here. Importable as `helpers.<module>` because conftest.py puts tests/ on sys.path (bench scripts do the same)."""
