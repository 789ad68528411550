"""Subscriber processes (TUI, archiver, alerts); each folds the bus with bus.aggregator and never imports producer."""
