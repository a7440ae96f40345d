"""Orders, trials and subscriptions: a customer's click becomes a contract."""
