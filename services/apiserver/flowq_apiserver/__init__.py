"""flowq apiserver service."""
