"""The crash-safe CSV archiver: ``python -m consumers.archiver`` records each run to ``runs/<run_id>/``."""
