"""The catalog: vendors' products with versions, the publication workflow, plans and prices."""
