"""Self-supervised fine-tuning of text embedding models with crops or dropout views."""

__version__ = "0.1.0"
