"""pobench: a benchmark harness for preference optimisation of language models."""
__version__ = "0.1.0"
