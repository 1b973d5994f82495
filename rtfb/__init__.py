"""rtfb: real-time fMRI neurofeedback with an offline resting-state analysis mode."""

__version__ = "0.1.0.dev0"
