"""flowq dispatcher service."""
