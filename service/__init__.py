"""Online scoring service: settings, schemas, batching engine, scoring, metrics and the FastAPI app."""
