"""msakit: multimodal sentiment analysis toolkit."""

__version__ = "0.1.0"


def from_pretrained(path=None):
    """Load an exported model folder, or with no argument the pretrained model shipped in the
    package; see :func:`msakit.pretrained.from_pretrained`."""
    from msakit.pretrained import from_pretrained as _load

    return _load(path)
