"""`dialsum sweep`: W&B sweep YAML run locally on Optuna (shared storage, parallel agents) or online by W&B."""
