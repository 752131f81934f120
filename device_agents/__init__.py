"""Device agents: export the ops of a search space, time them on a target, upload the statistics."""

__version__ = "0.1.0"
