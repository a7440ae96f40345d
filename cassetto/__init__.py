"""Asset storage (local folder or S3) and image work: validation, thumbnails, background colour."""

from cassetto.colour import LogoColours, analyse_logo, contrast_ratio, logo_background, main_colour
from cassetto.images import (
    ACCEPTED_CONTENT_TYPES,
    DEFAULT_RENDITIONS,
    IMMUTABLE_CACHE_CONTROL,
    InvalidImage,
    ProcessedImage,
    StoredBlob,
    process_image,
    store_image,
)
from cassetto.storage import (
    FileStorage,
    InvalidKey,
    NotFound,
    ObjectInfo,
    S3Storage,
    Storage,
    StorageError,
    storage_from_url,
)

__all__ = [
    "ACCEPTED_CONTENT_TYPES",
    "DEFAULT_RENDITIONS",
    "IMMUTABLE_CACHE_CONTROL",
    "FileStorage",
    "InvalidImage",
    "InvalidKey",
    "LogoColours",
    "NotFound",
    "ObjectInfo",
    "ProcessedImage",
    "S3Storage",
    "Storage",
    "StorageError",
    "StoredBlob",
    "analyse_logo",
    "contrast_ratio",
    "logo_background",
    "main_colour",
    "process_image",
    "storage_from_url",
    "store_image",
]
