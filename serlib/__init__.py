"""serlib: speech emotion recognition studies, reproduced side by side with honest protocols."""

__version__ = "0.1.0"
