"""msakit: multimodal sentiment analysis toolkit."""

__version__ = "0.1.0"
