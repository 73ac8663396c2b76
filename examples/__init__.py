"""Examples for celery-pools."""
