"""Workloads: what runs inside a guest, and how the host talks to it and checks it."""
