"""The hub's HTTP application: wiring, keys, browser sessions, CSRF and error pages."""
