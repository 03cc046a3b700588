"""Cluster endpoints (writer, reader, custom, distributed) over the PostgreSQL protocol.

Not built yet: see issue 5.
"""
