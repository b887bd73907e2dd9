"""msakit: multimodal sentiment analysis toolkit."""

__version__ = "0.1.0"


def from_pretrained(path=None):
    """Load a model: an exported folder, a Hugging Face Hub id (``owner/name``), or with no
    argument (or ``"default"``) the pretrained model shipped in the package. The result is
    callable (``model("text")`` -> score); see :func:`msakit.pretrained.from_pretrained`."""
    from msakit.pretrained import from_pretrained as _load

    return _load(path)
