"""Open compute: job specs, the scheduler, executors (local, slurm) and provenance."""
