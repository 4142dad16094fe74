"""Operator tooling to run the pipeline on Airflow clusters (not part of the `etl` package)."""
