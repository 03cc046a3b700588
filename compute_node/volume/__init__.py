"""The writer's volume client.

The sans-IO core lives in `topology` (PGs and the placement of their segments),
`lsn` (LSN allocation and backlinks) and `durability` (SCLs from acks to PGCL, VCL
and VDL; commit waiters; LAL back-pressure). It does no I/O and holds no locks, so
one thread drives it and tests drive it with Hypothesis. The shipper, page reader
and buffer cache build the I/O around it.
"""
