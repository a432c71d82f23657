"""Training and evaluation: does leakage move the metric? Plain torch/numpy, no Dagster."""
