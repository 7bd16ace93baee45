"""The local runtime: the same WorkerPool, engine and scaling loop as the operator, with worker processes.

Kept light: worker processes import :mod:`workerpool_operator.local.demo_app`, so nothing heavy here.
"""
