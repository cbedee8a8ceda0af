"""Pretraining: setup, the step, the loop."""
