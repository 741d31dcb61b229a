"""reformer-lab: the Reformer and an experiment framework around it."""

__version__ = "0.1.0"
