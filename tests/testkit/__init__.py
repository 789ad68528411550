"""Helpers shared by the test folders: synthetic contract events and child processes with deadlines."""
