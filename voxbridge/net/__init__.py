"""Networking helpers that run on trio."""
