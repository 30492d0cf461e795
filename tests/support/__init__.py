"""Test infrastructure: private Redis/PostgreSQL servers, throw-away databases, service processes."""
