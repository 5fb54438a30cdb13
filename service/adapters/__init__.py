"""Request adapters, one module per API: request model in -> runner jobs -> engine -> response model out.

Each adapter module has a `router` (a FastAPI APIRouter) that `service.app.create_app` includes; its routes take
their collaborators (engine, encoder, limits, checkpoint) from `request.app.state` through `service.http.ready`.
"""
