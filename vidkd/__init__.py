"""vidkd: cross-architecture knowledge distillation for video action recognition."""

__version__ = "0.1.0"
