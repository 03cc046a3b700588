"""Borealis' shared kernel: ids and LSNs, errors, config, logging, failpoints, redo codec."""
