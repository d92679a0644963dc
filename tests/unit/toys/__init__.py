"""Test-only plug-ins: a toy batch system and a toy network mode, each in files of its own.

They are not shipped: they prove that adding a batch system or a network
mode needs no change to any other file of the product (tests/unit/test_axes.py).
"""
