"""Plumbing shared by every stage of the DVC pipeline: params schema pieces, the stage runner, MLflow tracking,
atomic outputs, seeding and the report header.

It builds on :mod:`equitune.core` and never imports an experiment package (images, scan, nlg): those build on it.
"""
