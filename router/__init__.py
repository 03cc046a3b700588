"""Cluster endpoints over the PostgreSQL protocol: writer, reader and custom
endpoints, served by one router process (`python -m router`); see proxy.py."""
