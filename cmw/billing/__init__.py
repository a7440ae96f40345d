"""Billing: billing runs, invoice lines, invoices with gapless numbers."""
