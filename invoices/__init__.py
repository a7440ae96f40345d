"""Invoice documents: PDF and structured e-invoice formats."""
