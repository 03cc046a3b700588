"""The control plane: supervises the cluster's processes (supervisor.py), serves the
ControlPlane API (service.py), and decides failover from instance heartbeats
(failover.py, sans-IO). Autoscaling and backup orchestration: issues 7-8.
"""
