"""Benchmarks of amphora-operator against a real kube-apiserver (``python -m bench.run``).

Each measurement is paired with a baseline in the same run on the same cluster: the same
Amphora objects created the same way, with their status written straight through the API and
no operator, which is the floor the apiserver allows.
"""
