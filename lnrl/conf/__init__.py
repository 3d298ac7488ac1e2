"""Hydra config tree (a package so installed entry points can find it)."""
