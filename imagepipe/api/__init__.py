"""The web tier: uploads, tickets, callbacks, photo serving, health.

app, deps, services, problems   the FastAPI app, its injected clients, its error mapping
routes/                         HTTP only
bodies, ingest, idempotency, accept   the accept path, before the 202
indexing                        the callback's other half: index the photo
views, serving, negotiation, events, readiness   what the routes answer with
"""
