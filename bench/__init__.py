"""`make bench`: every speed and memory goal measured against its reference in the same run."""
