"""HTTP edge: FastAPI app factory, routes, request schemas and error mapping."""
