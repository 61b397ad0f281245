"""Operating widelog over HTTP: event lookup, incidents, infrastructure state (FastAPI routers)."""
