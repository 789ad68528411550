"""``python -m consumers.replay RUN_DIR``: republish an archived run on the bus, paced as it was recorded."""
