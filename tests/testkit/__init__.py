"""Helpers shared by the test folders: contract events, child processes, free ports and deadline waits."""
