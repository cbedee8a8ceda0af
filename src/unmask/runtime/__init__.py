"""The device and its precision, many processes, the optimizer, progress and tracking, preemption, a run's state saved and restored."""
