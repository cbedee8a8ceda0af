"""Safe files and locks, the run folder and the token store's layout, checkpoints on disk, model names to folders."""
