"""CRM sync: customers (companies and contacts) and subscriptions (deals) pushed to HubSpot."""
