"""Quantities the hand-derived backward gives beyond the gradient, built on the core's per-layer
A^(l−1), δ^(l) and per-example loss terms: one concept per module.
"""
