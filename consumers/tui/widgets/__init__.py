"""The dashboard's panels; each draws one part of a ``View`` and nothing else."""
