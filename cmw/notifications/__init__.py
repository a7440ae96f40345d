"""Notifications: the in-app notification centre and e-mail, both fed by events."""
