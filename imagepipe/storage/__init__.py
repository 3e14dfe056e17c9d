"""Storage backends behind one interface (see `base`)."""

from imagepipe.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
)

__all__ = [
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "Storage",
    "StorageError",
    "StorageFull",
    "StoragePermissionDenied",
]
