"""Storage backends behind one interface (see `base`)."""

from imagepipe.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
)

__all__ = [
    "ObjectInfo",
    "ObjectNotFound",
    "Storage",
    "StorageError",
    "StorageFull",
    "StoragePermissionDenied",
]
