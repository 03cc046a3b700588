"""A database instance (writer or reader): SQL front, SQLite engine on the volume VFS,
volume client (LSN allocation, quorum shipping, VDL tracking, page reads), replication.

Not built yet: see issues 3-5.
"""
