"""The hub's JSON API for member services (``/api/v1/...``)."""
