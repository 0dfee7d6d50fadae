"""The ``[amphora_k8s]`` section of octavia.conf, registered with oslo.config as Octavia's own are.

``oslo-config-generator --namespace amphora_octavia`` lists these options (entry point
``oslo.config.opts``).
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = "amphora_k8s"
TYPES = ("VM", "Container", "BareMetal")

OPTS = [
    cfg.StrOpt(
        "kubeconfig",
        help="Path of a kubeconfig file. Unset: the in-cluster ServiceAccount token of the Pod "
        "Octavia runs in.",
    ),
    cfg.StrOpt("context", help="kubeconfig context to use. Unset: its current context."),
    cfg.StrOpt(
        "namespace",
        default="octavia",
        help="Namespace of the Amphora resources and their Secrets.",
    ),
    cfg.StrOpt(
        "default_type",
        default="VM",
        choices=TYPES,
        help="Amphora type (spec.type) when the compute flavor is not in flavor_map.",
    ),
    cfg.StrOpt(
        "default_driver",
        help="Operator compute profile (spec.driver) when flavor_map names none. Unset: the "
        "operator's default for the type.",
    ),
    cfg.DictOpt(
        "flavor_map",
        default={},
        help="Octavia compute flavor (amp_flavor_id or a flavor profile's compute_flavor) -> "
        "'<Type>/<Amphora flavor>[@<profile>]', e.g. 'container-small:Container/small, "
        "1:VM/m1.amphora@nova'. Flavors not listed keep their name, with default_type and "
        "default_driver. 'Container/' means a Container without a flavor.",
    ),
    cfg.DictOpt(
        "image_map",
        default={},
        help="Octavia image tag (amp_image_tag or a flavor profile's amp_image_tag) -> Amphora "
        "image, e.g. 'amphora:registry.example/octavia/amphora:2.8' for Container amphorae. "
        "Tags not listed become 'tag:<tag>' (the nova profile resolves it through Glance); a "
        "Container amphora needs its tag listed.",
    ),
    cfg.DictOpt(
        "network_map",
        default={},
        help="Neutron network id -> Amphora network (spec.networks). The value 'pod' means "
        "the Pod network of a Container amphora (left out of spec.networks; its first "
        "address is lb_network_ip). Ids not listed pass through unchanged (VM, BareMetal); "
        "a Container amphora needs every network listed.",
    ),
    cfg.StrOpt(
        "key_source",
        default="nova",
        choices=[
            (
                "nova",
                "the public key of the Nova keypair amp_ssh_key_name, read with Octavia's "
                "own Nova client ([service_auth], [nova])",
            ),
            ("file", "<ssh_public_keys_dir>/<amp_ssh_key_name>.pub, no OpenStack needed"),
        ],
        help="Where the public key of [controller_worker] amp_ssh_key_name comes from.",
    ),
    cfg.StrOpt(
        "ssh_public_keys_dir",
        default="/etc/octavia/amphora-ssh-keys",
        help="With key_source = file: the directory holding '<key_name>.pub' (OpenSSH public "
        "keys, one a line) for [controller_worker] amp_ssh_key_name.",
    ),
    cfg.FloatOpt(
        "request_timeout",
        default=10.0,
        min=0.1,
        help="Seconds per Kubernetes API request.",
    ),
]


def register(conf: cfg.ConfigOpts = cfg.CONF) -> None:
    """Register the section (idempotent: oslo.config ignores an identical re-registration)."""
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """For oslo-config-generator."""
    return [(GROUP, list(OPTS))]
