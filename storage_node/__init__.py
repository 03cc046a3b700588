"""The storage node: segments of protection groups on LMDB, gossip, coalescing, GC, scrubbing."""
