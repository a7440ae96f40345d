"""Tenants: the platform marketplace and the distributor and reseller marketplaces under it."""
