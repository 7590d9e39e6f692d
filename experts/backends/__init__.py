"""Backends for the expert tools: protocols, ground-truth oracles, adapters to our models.

The model adapters (`owlv2`, `univtg`, `llava`) import their models lazily, so the tools and
the oracles work without them.
"""
