"""Durable DAG workflows of LLM, HTTP and Python tasks."""
