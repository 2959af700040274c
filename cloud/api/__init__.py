"""The collector's REST API (FastAPI; OpenAPI at /openapi.json, docs at /docs).

Everything under ``/api/v1`` needs a bearer token (``POST /api/v1/auth/login``
issues one); ``/health``, ``/metrics``, Open311 and CAP do not. Every write is
recorded in the audit table with who did it and the response status. Bad
bodies and parameters get a 4xx that names the problem; a ticket action in
the wrong state is a 409.

The rooms:

- ``app.py``: ``create_app``: middleware (body limit, audit), error handlers,
  the routers, the dashboard's files;
- ``context.py``: ``ApiContext``, the collector's parts the API is built from;
- ``deps.py``: typed dependencies: the context, store and clock, the caller,
  the roles a route needs;
- ``models.py``: request bodies and response models; the OpenAPI document is
  generated from them;
- ``errors.py``: the one error body, its handlers, what each route documents;
- ``routes/``: one router per resource (ops, auth, sites, alerts, tickets,
  commands, measures, interop).
"""

from cloud.api.app import create_app
from cloud.api.context import ApiContext

__all__ = ["ApiContext", "create_app"]
