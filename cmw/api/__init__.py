"""REST API foundation: the flask-smorest ``Api`` under ``/api/v1``, problem+json errors,
pagination helpers, authentication and role checks."""
