"""The experiment configs; `default.py` holds every field (the schema).

A package so that a config file can import its siblings
(`from configs import default`) and so that setup.cfg installs them beside
ban_jax, which reads the schema from configs/default.py.
"""
