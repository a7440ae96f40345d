"""Monitoring: Prometheus metrics, the platform's own alert conditions."""
