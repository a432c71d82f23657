"""Plain-Python core of the leakage audit: no Dagster imports below this package."""
