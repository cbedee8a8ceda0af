"""Held-out metrics, base against trained, minimal pairs, charts."""
