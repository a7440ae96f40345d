"""Users, organisations, memberships with roles per marketplace, API tokens and sign-in."""
