"""The FastAPI field-classification service (issue 6) will live here; nothing imports it yet."""
