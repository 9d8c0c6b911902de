"""The field-classification web service: a FastAPI app built by
:func:`service.app.create_app` from :class:`service.settings.Settings`, started by ``cropstar serve``."""
