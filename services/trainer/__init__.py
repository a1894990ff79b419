"""The trainer service: the control plane of training jobs (files, jobs, events, checkpoints)."""
