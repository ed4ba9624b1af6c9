"""The training engine: loop, evaluation, checkpoints, precision and schedules."""
