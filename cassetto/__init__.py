"""Asset storage (local folder or S3) and image work: validation, thumbnails, background colour."""
