"""charrnn: a character-level vanilla RNN language model trainer written in NumPy."""

__version__ = "0.1.0"
