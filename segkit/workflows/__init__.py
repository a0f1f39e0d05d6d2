"""Workflows: compositions of the rooms below (the auto plan -> train -> empirical stage)."""
