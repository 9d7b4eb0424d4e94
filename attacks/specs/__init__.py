"""The built-in attacks' declarations (attacks/registry.py): standard library only."""
