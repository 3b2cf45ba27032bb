"""slmforge: take a small language model from data to a fine-tuned, optimized, served model."""

__version__ = "0.1.0"
