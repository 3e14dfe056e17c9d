"""The routes: HTTP in, HTTP out. Domain work lives in the modules of `api/` they call.

photos      POST /photos, GET /photos, /photos/{id}, /photos/{id}/{size}
polling     GET /tickets/{id}, /tickets?ids=, /tickets/{id}/events
callbacks   POST /internal/callbacks
probes      /healthz, /readyz, /metrics
page        the browser page and its assets, /ui/config
docs        /docs, /redoc (development only)
"""
