"""Scoring predictions against labels: per image and class, from files or a run."""
