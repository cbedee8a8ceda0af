"""Data stages: sources (readers), store (token store), windows (packing and sampling)."""
