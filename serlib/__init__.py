"""serlib: speech emotion recognition studies, reproduced side by side with honest protocols."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``serlib.predict_emotion`` without importing torch at ``import serlib``."""
    if name == "predict_emotion":
        from serlib.predict import predict_emotion

        return predict_emotion
    raise AttributeError(f"module 'serlib' has no attribute {name!r}")
