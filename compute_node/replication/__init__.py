"""Read replicas (DESIGN.md section 7).

- `core`: sans-IO pieces: per-PG LSN history, MTR buffering, subscriber queues
  and their resynchronisation decision, the PGMRPL derivation.
- `publisher`: the writer's redo stream (gRPC service Replication) and PGMRPL.
- `replica`: a reader's volume, the engine's PageSource fed by the stream.
- `subscriber`: a reader's stream client: subscribe, apply, report, lag.
"""
