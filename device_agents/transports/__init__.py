"""Transports: how a program gets onto a target and how its executions are timed there."""
