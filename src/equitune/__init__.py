"""equitune: group equivariant fine-tuning (equi-tuning, lambda-equitune, equizero) of pretrained models.

A regular package on purpose (not a namespace package): with PYTHONPATH=<clone>/src, as
scripts/check_reproduce.py runs a fresh clone, the clone's package then wins outright over an editable
install, instead of being merged with it module by module.
"""
