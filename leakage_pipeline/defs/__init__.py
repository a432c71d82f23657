"""The thin Dagster layer: assets, checks, schedule, sensor and resources over ``leakage_pipeline.audit``."""
