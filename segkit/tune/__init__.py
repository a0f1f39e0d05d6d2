"""Searches: Optuna hyperparameter studies, threshold and watershed-seed searches."""
