"""qgn: the proposal-free Query-Guided Network for Grounded Multimodal NER."""

__version__ = "0.1.0"
