"""Users, roles and who may call what.

- :mod:`.identity`: the roles, and who is calling (a context variable the guard sets per request);
- :mod:`.accounts`: built-in users in SQL with argon2 password hashes;
- :mod:`.tokens`: signed JWT access tokens, and the server secret that signs them;
- :mod:`.policy`: the rule (public or a minimum role) of every route, inherited ones included;
- :mod:`.guard`: ASGI middleware that authenticates each request and applies its route's rule;
- :mod:`.routes`: MONAI Label's ``/auth/`` endpoints (what the 3D Slicer plugin logs in with) and ``/users/``.
"""
