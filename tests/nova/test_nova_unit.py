"""Unit tier of the Nova driver: pure functions and configuration checks (no Nova needed)."""

from __future__ import annotations

import base64
import gzip
import logging
import os
import traceback
from typing import Any

import openstack.exceptions
import pytest
import yaml
from amphora_drivers.exceptions import (
    AmphoraBuildError,
    AmphoraComputeError,
    Reason,
    classify_status,
    invalid,
)
from amphora_drivers.nova import (
    NOVA_USER_DATA_LIMIT,
    NovaDriver,
    UserDataTooLarge,
    is_bare_metal_flavor,
    render_user_data,
)
from amphora_drivers.nova.errors import api_error

from tests.nova.cloud_init import mime_parts

CLOUDS = {
    "clouds": {
        "a": {"auth_type": "none", "compute_endpoint_override": "http://127.0.0.1:9/v2.1"},
        "b": {"auth_type": "none", "compute_endpoint_override": "http://127.0.0.1:9/v2.1"},
    }
}


def decoded(encoded: str | None) -> bytes:
    assert encoded is not None
    return base64.b64decode(encoded)


# -- user data ------------------------------------------------------------------------------


def test_nothing_to_pass_means_no_user_data() -> None:
    assert render_user_data(files={}, keys=[], user_data=None) is None


def test_user_data_alone_passes_unchanged() -> None:
    data = b"#!/bin/sh\nexit 0\n"
    assert decoded(render_user_data(files={}, keys=[], user_data=data)) == data


@pytest.mark.parametrize(
    ("user_data", "content_type"),
    [
        (gzip.compress(b"#cloud-config\n{}\n"), "application/x-gzip"),
        (b"\xff\xfe not utf-8", "application/octet-stream"),
        (b"## template: jinja\n#cloud-config\n", "text/plain"),
    ],
    ids=["gzip", "binary", "jinja"],
)
def test_user_part_is_typed_for_cloud_init_and_kept_byte_for_byte(
    user_data: bytes, content_type: str
) -> None:
    user_part, driver_part = mime_parts(
        decoded(render_user_data(files={"/f": b"x"}, keys=[], user_data=user_data))
    )
    assert user_part.get_content_type() == content_type
    assert user_part.get_payload(decode=True) == user_data
    assert driver_part.get_content_type() == "text/cloud-config"


def test_user_multipart_gets_the_driver_part_appended_not_nested() -> None:
    user = (
        b'Content-Type: multipart/mixed; boundary="XX"\nMIME-Version: 1.0\n\n'
        b"--XX\nContent-Type: text/x-shellscript\n\n#!/bin/sh\ntrue\n--XX--\n"
    )
    parts = mime_parts(
        decoded(render_user_data(files={}, keys=["ssh-ed25519 AAAA k"], user_data=user))
    )
    assert [p.get_content_type() for p in parts] == ["text/x-shellscript", "text/cloud-config"]


def test_whole_document_is_gzipped_only_when_needed() -> None:
    small = render_user_data(files={"/f": b"x" * 100}, keys=[], user_data=None)
    assert decoded(small).startswith(b"#cloud-config\n")
    big_text = b"#!/bin/sh\n" + b"echo hello world\n" * 3500  # ~60 KB, 80 KB as base64
    encoded = render_user_data(files={}, keys=[], user_data=big_text)
    assert encoded is not None and len(encoded) <= NOVA_USER_DATA_LIMIT
    assert gzip.decompress(decoded(encoded)) == big_text


def test_incompressible_content_over_the_limit_is_refused() -> None:
    files = {f"/f{i}": os.urandom(10 * 1024) for i in range(5)}
    with pytest.raises(UserDataTooLarge) as err:
        render_user_data(files=files, keys=[], user_data=None)
    assert err.value.encoded_size > NOVA_USER_DATA_LIMIT


def test_non_ascii_paths_stay_ascii_yaml() -> None:
    encoded = render_user_data(files={"/etc/caf\u00e9": b"x"}, keys=[], user_data=None)
    config = yaml.safe_load(decoded(encoded))
    assert config["write_files"][0]["path"] == "/etc/caf\u00e9"


# -- flavors and errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        (
            {
                "resources:CUSTOM_BAREMETAL_GOLD": "1",
                "resources:VCPU": "0",
                "resources:MEMORY_MB": "0",
                "resources:DISK_GB": "0",
            },
            True,
        ),
        ({"resources:CUSTOM_BAREMETAL_GOLD": "1"}, False),  # would also claim VCPU etc.
        ({"resources:VCPU": "0", "resources:MEMORY_MB": "0", "resources:DISK_GB": "0"}, False),
        ({}, False),
        ({"hw:numa_nodes": "1"}, False),
    ],
)
def test_bare_metal_flavor_convention(specs: dict[str, str], expected: bool) -> None:
    assert is_bare_metal_flavor(specs) is expected


def http_error(status: int, details: str) -> openstack.exceptions.HttpException:
    return openstack.exceptions.HttpException(message="x", details=details, http_status=status)


@pytest.mark.parametrize(
    ("status", "details", "reason", "retryable", "field"),
    [
        (400, "Invalid key_name provided.", Reason.INVALID_KEY, False, "keys"),
        (400, "Flavor 9 could not be found.", Reason.FLAVOR_NOT_FOUND, False, "amphora_flavor"),
        (400, "Security group web not found.", Reason.INVALID_INPUT, False, "sec_groups"),
        (400, "something else", Reason.INVALID_INPUT, False, None),
        (403, "Policy doesn't allow this", Reason.FORBIDDEN, False, None),
        (
            401,
            "The request you have made requires authentication",
            Reason.UNAUTHORIZED,
            False,
            None,
        ),
        (413, "Quota exceeded for cores", Reason.QUOTA_EXCEEDED, True, None),
        (
            409,
            "Multiple possible networks found, use a Network ID to be more specific.",
            Reason.INVALID_INPUT,
            False,
            "network_ids",
        ),
        (409, "Instance is locked", Reason.CONFLICT, True, None),
        (408, "Request timeout", Reason.TIMEOUT, True, None),
        (502, "Bad gateway", Reason.BACKEND_UNAVAILABLE, True, None),
    ],
)
def test_error_mapping(
    status: int, details: str, reason: Reason, retryable: bool, field: str | None
) -> None:
    error = api_error(http_error(status, details), "create server x", AmphoraBuildError)
    assert isinstance(error, AmphoraBuildError)
    assert (error.reason, error.retryable, error.field) == (reason, retryable, field)
    assert details in str(error)


# -- configuration --------------------------------------------------------------------------


def content(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"clouds_yaml": "/x", "clouds_yaml_content": "clouds: {}"},
        {"clouds_yaml_content": "x", "microversion": "2.60"},
        {"clouds_yaml_content": "x", "managed_tag": "amphora-owner:x"},
        {"clouds_yaml_content": "x", "delete_attempts": 0},
    ],
    ids=["no-source", "two-sources", "old-microversion", "reserved-managed-tag", "no-attempts"],
)
def test_constructor_rejects_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        NovaDriver(**options)


@pytest.mark.parametrize(
    ("text", "cloud"),
    [("clouds: {}", None), (content(CLOUDS), None), (content(CLOUDS), "c"), (": : :", None)],
    ids=["empty", "ambiguous", "unknown", "not-yaml"],
)
def test_bad_clouds_yaml_is_a_terminal_error_on_first_use(text: str, cloud: str | None) -> None:
    driver = NovaDriver(clouds_yaml_content=text, cloud=cloud)
    with pytest.raises(AmphoraComputeError) as err:
        driver.find()
    assert (err.value.reason, err.value.retryable) == (Reason.INVALID_INPUT, False)
    assert err.value.__cause__ is None and err.value.__context__ is None  # nothing quotes it


MARKER = "marker-password-3f9a1c"


@pytest.mark.parametrize(
    "text",
    [
        # The YAML parser's own message would quote these lines.
        f"clouds:\n  c:\n    auth:\n      password: {MARKER}\n     bad: [",
        "clouds:\n  c: {auth: {password: '" + MARKER + "'}\n",
        f"clouds:\n\t- password: {MARKER}\n",
        f"clouds: [{MARKER}]\n",
    ],
    ids=["bad-indent", "unclosed-flow", "tab", "clouds-not-a-mapping"],
)
def test_a_malformed_inline_clouds_yaml_never_leaks_its_text(text: str) -> None:
    driver = NovaDriver(clouds_yaml_content=text)
    with pytest.raises(AmphoraComputeError) as err:
        driver.find()
    shown = "".join(traceback.format_exception(err.value)) + repr(err.value)
    assert MARKER not in shown
    assert (err.value.reason, err.value.retryable) == (Reason.INVALID_INPUT, False)
    assert "clouds.yaml" in err.value.message


@pytest.mark.parametrize(
    ("status", "message", "reason", "retryable"),
    [
        (None, "", Reason.BACKEND_UNAVAILABLE, True),
        (401, "", Reason.UNAUTHORIZED, False),
        (403, "Quota exceeded for instances", Reason.QUOTA_EXCEEDED, True),
        (403, "pods is forbidden: exceeded quota: q", Reason.QUOTA_EXCEEDED, True),
        (403, "Policy doesn't allow", Reason.FORBIDDEN, False),
        (404, "", Reason.NOT_FOUND, False),
        (409, "", Reason.CONFLICT, True),
        (422, "", Reason.INVALID_INPUT, False),
        (429, "", Reason.RATE_LIMITED, True),
        (504, "", Reason.TIMEOUT, True),
        (503, "", Reason.BACKEND_UNAVAILABLE, True),
        (302, "", Reason.UNKNOWN, False),
    ],
)
def test_one_status_table_for_every_driver(
    status: int | None, message: str, reason: Reason, retryable: bool
) -> None:
    assert classify_status(status, message) == (reason, retryable)


def test_invalid_names_the_field_once() -> None:
    for message in ("needs a UUID", "image_id: needs a UUID"):
        error = invalid("image_id", message)
        assert (error.message, error.reason, error.retryable, error.field) == (
            "image_id: needs a UUID",
            Reason.INVALID_INPUT,
            False,
            "image_id",
        )


def test_keystoneauth_debug_lines_never_carry_user_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    NovaDriver(clouds_yaml_content=content(CLOUDS), cloud="a")  # installs the filter
    secret = base64.b64encode(b"#cloud-config\nssh_authorized_keys: [k]\n").decode()
    with caplog.at_level(logging.DEBUG, logger="keystoneauth"):
        logging.getLogger("keystoneauth.session").debug(
            "REQ: curl -X POST -d '%s'", f'{{"server": {{"user_data": "{secret}", "name": "a"}}}}'
        )
        logging.getLogger("keystoneauth.session.response").debug(
            '{"server": {"OS-EXT-SRV-ATTR:user_data": "%s"}}', secret
        )
    assert secret not in caplog.text
    assert caplog.text.count('"<redacted>"') == 2
    assert '"name": "a"' in caplog.text
