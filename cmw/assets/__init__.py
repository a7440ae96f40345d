"""Stored files and images: a row per stored file, images with renditions, serving them."""
