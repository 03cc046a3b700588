"""Cluster endpoints over the PostgreSQL protocol: writer, reader and custom
endpoints, served by one router process (`python -m router`; see proxy.py).

What a client should know:
- The router checks the password (SCRAM-SHA-256 against users.json) and logs in
  to the instance with the cluster's proxy secret; the client sees the instance's
  ParameterStatus but the router's own BackendKeyData (cancel works through it).
- An idle session (between transactions) may be moved to another instance when
  its instance leaves the endpoint (draining, removed, unhealthy, a lagging
  reader) or goes away (restart, failover). A move replays the startup and the
  session's named prepared statements only: settings made with SET, temporary
  tables, LISTEN, advisory locks and cursors WITH HOLD do not carry over.
- A session inside a transaction is never moved; it is closed (57P01) only when
  its instance is gone.
- TLS when the router has a certificate (`borealis up --tls`, config
  pg_tls_cert_file and pg_tls_key_file); else an SSLRequest is answered "N"
  (sslmode=prefer goes on in plain text; sslmode=require fails, as with
  PostgreSQL without ssl). The router's own connections to the instances stay
  plain: they run on the same machine.
"""
