"""The embedded demo: a synthetic dataset with planted leaks, built from a fixed seed."""
