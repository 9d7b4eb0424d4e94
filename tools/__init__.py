"""Reporting: finished runs -> paper-style CSV/Markdown tables and trade-off plots."""
