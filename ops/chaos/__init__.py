"""Chaos for the cloud flow: bad and redelivered up-tunnel traffic, worker kills, and the checks after (run.py)."""
