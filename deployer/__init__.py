"""Provisioning on Apache Libcloud: the deployment state machine, SSH bootstrap and its worker."""
