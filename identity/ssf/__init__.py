"""OpenID Shared Signals Framework 1.0: the hub as a transmitter of CAEP and RISC events to
member services, as Security Event Tokens (RFC 8417).

- ``events``: the event types the hub sends, and each event's payload (pure).
- ``sets``: a SET's claims and its signature (``typ: secevent+jwt``).
- ``streams``: a service's one stream: its configuration's rules and its row.
- ``emit``: the SETs an account's change calls for, written in the caller's transaction as
  ``notices`` rows (channel ``ssf`` pushed by the sync worker's notice engine, ``ssf_poll``
  kept for the service to poll).
- ``poll``: RFC 8936 polling: acknowledgements, errors, the next SETs."""
