"""Mercato's core: domain models, services and the REST API, one package per feature."""
