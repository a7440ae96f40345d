"""Vendor webhooks: signed HTTPS deliveries of the events about a vendor's products."""
