"""Subscriber processes (TUI, archiver, alerts): each folds the bus itself; none imports producer."""
