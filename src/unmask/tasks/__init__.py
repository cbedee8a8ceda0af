"""What a model does after pretraining: tasks, fine-tuning, probes, suites."""
