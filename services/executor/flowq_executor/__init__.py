"""flowq executor service."""
