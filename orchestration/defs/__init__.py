"""Dagster definitions: thin over the engine, turning its results into Dagster events."""
