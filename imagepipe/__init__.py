"""imagepipe: a Flickr-style photo pipeline (synchronous request, asynchronous response)."""

__version__ = "0.1.0"
