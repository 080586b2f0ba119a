"""The support console, mounted at ``/support`` as its own sub-application: support agents and
supervisors view and fix people's linked profiles; admins look after member services (settings,
secret ages, sync health, dead letters, resyncs) and staff; service owners see their own services'
sync alone. All with least privilege (``access.py``), a second factor, and an audit record of every
look (``audit.record``, in the same transaction as the action).

Console sessions are separate from customer sessions (their own cookie, scoped to ``/support``),
bound to one staff member, and end after inactivity (``console_idle_ttl``) or their lifetime
(``console_session_ttl``)."""
