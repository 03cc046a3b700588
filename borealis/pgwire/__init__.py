"""The PostgreSQL wire protocol: framing (messages), type codecs (types), SCRAM
(scram), COPY formats (copy) and the asyncio server (server). The SQL behind it is
a Backend (backend.py)."""
