"""Benchmarks of cutline against bare Kafka clients and DuckDB: ``python -m bench``."""
