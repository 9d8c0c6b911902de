"""The service's routes, one router factory per resource: ``make_router(settings, state) -> APIRouter``."""
