"""Cluster state and epochs, health and failover, autoscaling, backup orchestration.

Not built yet: see issues 6-8.
"""
