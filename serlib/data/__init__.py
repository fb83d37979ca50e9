"""Corpora, manifests, splits, segmentation and the synthetic corpus."""

from serlib.data.audio import AudioError, load_audio
from serlib.data.corpus import COLUMNS, Corpus, DataError

__all__ = ["AudioError", "COLUMNS", "Corpus", "DataError", "load_audio"]
