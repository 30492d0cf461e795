"""Kubernetes for step runners: the client (official `kubernetes` package, in a bounded thread
pool), rendering of the component step types to objects, and readiness with its causes."""
