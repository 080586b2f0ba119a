"""``onesignin demo``: two member services, "Store" and "Forum", with the hub in the same
process, or (``--services-only``) against a hub running elsewhere.

:mod:`demo.member` is a member service written as a reference integration (sign-in through the
hub, profile changes through the hub's API, and keeping the person's details current from the
webhook and the service's own Kafka topic); :mod:`demo.run` starts the hub (unless asked not
to), registers the two services and a demo person, and serves them."""
