"""unmask: train, evaluate and use masked language models."""

__version__ = "0.1.0"
