"""Launching Borealis processes: the local launcher (also used by the tests) and AZ layout."""
