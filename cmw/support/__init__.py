"""Support tickets: threads between a customer and the vendor or the marketplace's
support, by API, pages and e-mail, with attachments, optionally forwarded elsewhere."""
