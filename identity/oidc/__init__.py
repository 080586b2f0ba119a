"""The OpenID Connect provider: authlib's protocol core, with the hub's storage and rules."""
