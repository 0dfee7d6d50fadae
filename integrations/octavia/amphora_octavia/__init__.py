"""amphora_octavia: an ``octavia.compute.drivers`` plugin that builds amphorae as Amphora resources.

Entry point ``compute_amphora_k8s_driver``
(:class:`amphora_octavia.driver.AmphoraK8sComputeDriver`); options in the ``[amphora_k8s]``
section (:mod:`amphora_octavia.config`); the pure mapping between Octavia's arguments and the
Amphora spec in :mod:`amphora_octavia.mapping`.
"""
