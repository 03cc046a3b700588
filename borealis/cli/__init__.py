"""The `borealis` command line."""
