"""The alert daemon: ``python -m consumers.alerts`` notifies when rules over the telemetry fire or clear."""
