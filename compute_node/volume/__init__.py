"""The writer's volume client.

The sans-IO core lives in `topology` (PGs and the placement of their segments),
`lsn` (LSN allocation and backlinks) and `durability` (SCLs from acks to PGCL, VCL
and VDL; commit waiters; LAL back-pressure). It does no I/O and holds no locks, so
one thread drives it and tests drive it with Hypothesis.

The I/O around it: `shipper` (per-PG group commit to the six segments), `reader`
(page reads from one segment, hedged), `cache` (the buffer cache), `volume` (the
engine's PageSource tying them together; `Volume.create` and `Volume.open`),
`recovery` (what `open` runs: fencing, the durable point, the truncation range)
and `config` (VolumeConfig).
"""
