"""The web pages: the marketplace storefront and the control panel (Jinja templates)."""
