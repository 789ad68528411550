"""The Prometheus exporter: every catalogue metric per run and rank (`python -m consumers.exporter`)."""
