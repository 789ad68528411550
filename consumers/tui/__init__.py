"""The live Tamiyo dashboard: a Textual app that folds the bus into panels (``python -m consumers.tui``)."""
