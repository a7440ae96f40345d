"""Benchmarks: ``make bench`` (``python -m bench``) measures the web process under gunicorn
with wrk against a fresh PostgreSQL database and RabbitMQ, on loopback only."""
