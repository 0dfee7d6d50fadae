"""The spec's input rules, enforced once by BuildRequest and surfaced by driver.build().

Each rule is tested at its edge (the last accepted value and the first rejected one), and
every rejection from ``build()`` must name the offending field and the rule, so that an
operator can show the user what to change.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from amphora_drivers.exceptions import AmphoraBuildError, Reason
from amphora_drivers.noop import NoopDriver
from amphora_drivers.types import (
    MAX_CONFIG_DRIVE_FILE_BYTES,
    MAX_CONFIG_DRIVE_FILES,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_USER_DATA_BYTES,
    AmphoraState,
    AmphoraType,
    BuildRequest,
    validate_ssh_public_key,
)
from pydantic import ValidationError

KEY_TYPES = ("rsa", "ed25519", "ecdsa-256", "ecdsa-384", "ecdsa-521")
_WIRE_NAMES = {
    "rsa": "ssh-rsa",
    "ed25519": "ssh-ed25519",
    "ecdsa-256": "ecdsa-sha2-nistp256",
    "ecdsa-384": "ecdsa-sha2-nistp384",
    "ecdsa-521": "ecdsa-sha2-nistp521",
}


class CapturingDriver(NoopDriver):
    """A noop driver that keeps the validated requests, to see what build() made of its input."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.requests: list[BuildRequest] = []

    def create(self, request: BuildRequest) -> str:
        self.requests.append(request)
        return super().create(request)


def blob_key(declared: str, embedded: str | None = None, comment: str = "test") -> str:
    """An OpenSSH key line whose body embeds ``embedded`` (default: the declared type)."""
    name = (embedded or declared).encode()
    blob = struct.pack(">I", len(name)) + name + struct.pack(">I", 32) + os.urandom(32)
    return f"{declared} {base64.b64encode(blob).decode()} {comment}"


@pytest.fixture(scope="module")
def real_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Public key lines made by ssh-keygen when installed, else constructed blobs."""
    if shutil.which("ssh-keygen") is None:
        return {kind: blob_key(_WIRE_NAMES[kind]) for kind in KEY_TYPES}
    folder = tmp_path_factory.mktemp("keys")
    keys = {}
    for kind in KEY_TYPES:
        algorithm, _, bits = kind.partition("-")
        path = folder / f"id_{kind}"
        command = ["ssh-keygen", "-q", "-t", algorithm, "-N", "", "-C", f"me@{kind}", "-f"]
        if bits:
            command[4:4] = ["-b", bits]
        elif algorithm == "rsa":
            command[4:4] = ["-b", "2048"]
        subprocess.run([*command, str(path)], check=True, capture_output=True, timeout=60)
        keys[kind] = path.with_suffix(".pub").read_text()
    return keys


def build_error(driver: NoopDriver | None = None, **kwargs: Any) -> AmphoraBuildError:
    """Call build() expecting an input-rule rejection; return the error after common checks."""
    driver = driver or NoopDriver()
    kwargs.setdefault("name", "amp")
    kwargs.setdefault("owner", "owner-1")
    with pytest.raises(AmphoraBuildError) as caught:
        driver.build(**kwargs)
    err = caught.value
    assert err.reason == Reason.INVALID_INPUT
    assert err.retryable is False
    assert err.field is not None
    assert str(err).startswith(f"{err.field}: "), "the message leads with the field"
    assert driver.find() == [], "a rejected request builds nothing"
    return err


def built_request(**kwargs: Any) -> BuildRequest:
    """Build through a driver and return the validated request it received."""
    driver = CapturingDriver()
    kwargs.setdefault("name", "amp")
    driver.build(**kwargs)
    assert len(driver.requests) == 1
    return driver.requests[0]


class TestAmphoraType:
    """amphora_type is one of the spec's types; HWLoadBalancer is known but not built."""

    @pytest.mark.parametrize(
        ("amphora_type", "extra"),
        [
            ("VM", {}),
            (AmphoraType.VM, {}),
            ("BareMetal", {}),
            ("Container", {"image_id": "nginx"}),
        ],
    )
    def test_spec_types_are_built(self, amphora_type: Any, extra: dict[str, Any]) -> None:
        driver = NoopDriver()
        amphora_id = driver.build(amphora_type, name="amp", **extra)
        assert driver.get_amphora(amphora_id=amphora_id).amphora_type is AmphoraType(amphora_type)

    def test_default_type_is_vm(self) -> None:
        assert built_request().amphora_type is AmphoraType.VM

    def test_hw_load_balancer_is_accepted_by_the_model(self) -> None:
        request = BuildRequest(name="amp", amphora_type="HWLoadBalancer")
        assert request.amphora_type is AmphoraType.HW_LOAD_BALANCER

    def test_hw_load_balancer_is_not_implemented_by_the_noop_driver(self) -> None:
        driver = NoopDriver(record_calls=True)
        with pytest.raises(NotImplementedError, match="HWLoadBalancer") as caught:
            driver.build(amphora_type="HWLoadBalancer", name="amp", owner="o-1")
        assert not isinstance(caught.value, AmphoraBuildError), "unsupported is not bad input"
        assert [c.method for c in driver.calls if c.method == "create"] == []
        assert driver.find() == []

    @pytest.mark.parametrize("bad", ["Mainframe", "vm", "", "HWLB"])
    def test_unknown_type_is_rejected_naming_the_field(self, bad: str) -> None:
        err = build_error(amphora_type=bad)
        assert err.field == "amphora_type"
        assert "not a valid AmphoraType" in str(err)
        assert repr(bad) in str(err)

    def test_unknown_type_is_rejected_by_the_model(self) -> None:
        with pytest.raises(ValidationError):
            BuildRequest(name="amp", amphora_type="Mainframe")


class TestContainerNeedsImage:
    """A Container amphora cannot be built without an image."""

    def test_container_without_image_is_rejected(self) -> None:
        err = build_error(amphora_type="Container")
        assert "image_id: required for a Container amphora" in str(err)

    def test_container_without_image_names_the_image_field(self) -> None:
        assert build_error(amphora_type="Container").field == "image_id"

    def test_container_with_image_is_accepted(self) -> None:
        request = built_request(amphora_type="Container", image_id="nginx:1.27")
        assert request.image_id == "nginx:1.27"

    def test_vm_without_image_is_accepted(self) -> None:
        assert built_request(amphora_type="VM").image_id is None


class TestConfigDriveFiles:
    """At most five files, each at most 10 KiB, at absolute normalised paths."""

    def test_five_files_are_accepted(self) -> None:
        files = {f"/etc/f{i}": "x" for i in range(MAX_CONFIG_DRIVE_FILES)}
        assert len(built_request(config_drive_files=files).config_drive_files) == 5

    def test_six_files_are_rejected(self) -> None:
        err = build_error(config_drive_files={f"/etc/f{i}": "x" for i in range(6)})
        assert err.field == "config_drive_files"
        assert "at most 5 files" in str(err) and "got 6" in str(err)

    @pytest.mark.parametrize("kind", [bytes, str])
    def test_exactly_10240_bytes_is_accepted(self, kind: type) -> None:
        content = kind(b"x" * 10240) if kind is bytes else "x" * 10240
        request = built_request(config_drive_files={"/etc/big": content})
        assert len(request.config_drive_files["/etc/big"]) == MAX_CONFIG_DRIVE_FILE_BYTES == 10240

    @pytest.mark.parametrize("content", [b"x" * 10241, "x" * 10241, io.BytesIO(b"x" * 10241)])
    def test_10241_bytes_is_rejected(self, content: Any) -> None:
        err = build_error(config_drive_files={"/etc/big": content})
        assert err.field == "config_drive_files"
        assert "/etc/big is 10241 bytes" in str(err)
        assert "10 KiB" in str(err)

    def test_size_is_counted_in_utf8_bytes_not_characters(self) -> None:
        assert (
            built_request(config_drive_files={"/e": "é" * 5120}).config_drive_files["/e"]
            == ("é" * 5120).encode()
        )
        err = build_error(config_drive_files={"/e": "é" * 5120 + "a"})
        assert "10241 bytes" in str(err)

    @pytest.mark.parametrize(
        ("content", "expected"),
        [
            ("text ✓", "text ✓".encode()),
            (b"\x00\xffbinary", b"\x00\xffbinary"),
            (bytearray(b"array"), b"array"),
            (io.StringIO("from StringIO ✓"), "from StringIO ✓".encode()),
            (io.BytesIO(b"from BytesIO"), b"from BytesIO"),
        ],
        ids=["str", "bytes", "bytearray", "StringIO", "BytesIO"],
    )
    def test_contents_may_be_str_bytes_or_file_like(self, content: Any, expected: bytes) -> None:
        request = built_request(config_drive_files={"/etc/amphora.conf": content})
        assert request.config_drive_files == {"/etc/amphora.conf": expected}

    def test_contents_may_be_an_open_file(self, tmp_path: Path) -> None:
        source = tmp_path / "haproxy.cfg"
        source.write_bytes(b"global\n  maxconn 100\n")
        with source.open("rb") as handle:
            request = built_request(config_drive_files={"/etc/haproxy.cfg": handle})
        assert request.config_drive_files["/etc/haproxy.cfg"] == b"global\n  maxconn 100\n"

    @pytest.mark.parametrize("content", [42, None, ["a"], {"a": 1}])
    def test_other_content_types_are_rejected(self, content: Any) -> None:
        err = build_error(config_drive_files={"/etc/x": content})
        assert err.field == "config_drive_files"
        assert "must be str, bytes or a file-like object" in str(err)

    @pytest.mark.parametrize(
        ("path", "rule"),
        [
            ("etc/passwd", "absolute"),
            ("", "absolute"),
            ("~/x", "absolute"),
            ("/etc/../passwd", "normalised"),
            ("/etc//passwd", "normalised"),
            ("/etc/", "normalised"),
            ("/etc/./passwd", "normalised"),
            ("/etc/pass\x00wd", "NUL"),
            ("/" + "a" * 255, "255 characters"),
        ],
        ids=["relative", "empty", "tilde", "dotdot", "double-slash", "trailing-slash", "dot",
             "nul", "too-long"],
    )  # fmt: skip
    def test_paths_must_be_absolute_and_normalised(self, path: str, rule: str) -> None:
        err = build_error(config_drive_files={path: "x"})
        assert err.field == "config_drive_files"
        assert rule in str(err)

    def test_leading_double_slash_is_rejected(self) -> None:
        build_error(config_drive_files={"//etc/passwd": "x"})

    def test_root_is_not_a_file_path(self) -> None:
        build_error(config_drive_files={"/": "x"})

    def test_a_255_character_path_is_accepted(self) -> None:
        path = "/" + "a" * 254
        assert path in built_request(config_drive_files={path: "x"}).config_drive_files

    def test_a_bytes_path_is_rejected(self) -> None:
        err = build_error(config_drive_files={b"/etc/passwd": "x"})
        assert err.field == "config_drive_files"

    def test_a_list_of_pairs_is_rejected(self) -> None:
        err = build_error(config_drive_files=[("/etc/passwd", "x")])
        assert "must be a mapping" in str(err)

    def test_none_means_no_files(self) -> None:
        assert built_request(config_drive_files=None).config_drive_files == {}


class TestUserData:
    """user_data is str, bytes or file-like, at most 64 KiB."""

    @pytest.mark.parametrize(
        ("user_data", "expected"),
        [
            ("#cloud-config\n", b"#cloud-config\n"),
            (b"#!/bin/sh\n", b"#!/bin/sh\n"),
            (io.StringIO("#cloud-config ✓"), "#cloud-config ✓".encode()),
            (io.BytesIO(b"\x1f\x8bgzip"), b"\x1f\x8bgzip"),
            (None, None),
        ],
        ids=["str", "bytes", "StringIO", "BytesIO", "none"],
    )
    def test_user_data_may_be_str_bytes_or_file_like(
        self, user_data: Any, expected: bytes | None
    ) -> None:
        assert built_request(user_data=user_data).user_data == expected

    def test_64_kib_is_accepted_and_one_more_byte_is_not(self) -> None:
        assert len(built_request(user_data=b"x" * MAX_USER_DATA_BYTES).user_data or b"") == 65536
        err = build_error(user_data=io.BytesIO(b"x" * (MAX_USER_DATA_BYTES + 1)))
        assert err.field == "user_data"
        assert "65537 bytes" in str(err) and "65536" in str(err)

    @pytest.mark.parametrize("user_data", [42, ["#cloud-config"], 1.5])
    def test_other_types_are_rejected(self, user_data: Any) -> None:
        err = build_error(user_data=user_data)
        assert err.field == "user_data"
        assert "must be str, bytes or a file-like object" in str(err)


class TestSshKeys:
    """keys are single-line OpenSSH public keys whose body matches the declared type."""

    @pytest.mark.parametrize("kind", KEY_TYPES)
    def test_real_keys_are_accepted(self, real_keys: dict[str, str], kind: str) -> None:
        line = real_keys[kind]
        assert line.startswith(_WIRE_NAMES[kind] + " ")
        request = built_request(keys=[line])
        assert request.keys == (line.strip(),), "a .pub file's trailing newline is stripped"

    def test_all_key_types_together(self, real_keys: dict[str, str]) -> None:
        assert len(built_request(keys=list(real_keys.values())).keys) == len(KEY_TYPES)

    def test_a_key_without_comment_is_accepted(self) -> None:
        key = " ".join(blob_key("ssh-ed25519").split()[:2])
        assert validate_ssh_public_key(key) == key

    def test_a_single_string_is_one_key(self) -> None:
        key = blob_key("ssh-ed25519")
        assert built_request(keys=key).keys == (key,)

    def test_no_keys(self) -> None:
        assert built_request(keys=None).keys == ()

    @pytest.mark.parametrize(
        ("key", "rule"),
        [
            (blob_key("ssh-dss"), "key type 'ssh-dss' is not one of"),
            ("hello world", "key type 'hello' is not one of"),
            ("ssh-ed25519", "must be '<type> <base64> [comment]'"),
            ("", "must be '<type> <base64> [comment]'"),
            ("ssh-ed25519 not-base64!", "not valid base64"),
            ("ssh-rsa AAAA=B", "not valid base64"),
            ("ssh-ed25519 AAAA", "too short"),
            (blob_key("ssh-rsa", embedded="ssh-ed25519"), "does not match its declared type"),
            (blob_key("ecdsa-sha2-nistp256", embedded="ecdsa-sha2-nistp384"), "does not match"),
        ],
        ids=["dss", "not-a-key", "type-only", "empty", "not-base64", "bad-padding",
             "too-short", "rsa-header-ed25519-body", "p256-header-p384-body"],
    )  # fmt: skip
    def test_bad_keys_are_rejected(self, key: str, rule: str) -> None:
        err = build_error(keys=[key])
        assert err.field == "keys"
        assert "keys[0]" in str(err)
        assert rule in str(err)

    def test_two_keys_on_two_lines_are_rejected(self) -> None:
        joined = blob_key("ssh-ed25519", comment="a") + "\n" + blob_key("ssh-rsa", comment="b")
        err = build_error(keys=[joined])
        assert "single line" in str(err)

    def test_two_keys_on_two_lines_without_comments_are_rejected(self) -> None:
        first, second = (" ".join(blob_key("ssh-ed25519").split()[:2]) for _ in range(2))
        with pytest.raises(ValueError, match="single line"):
            validate_ssh_public_key(f"{first}\n{second}")

    def test_the_bad_key_is_named_by_index(self) -> None:
        err = build_error(keys=[blob_key("ssh-ed25519"), "ssh-ed25519 not-base64!"])
        assert "keys[1]" in str(err) and "keys[0]" not in str(err)

    @pytest.mark.parametrize("key", [b"ssh-ed25519 AAAA", 42, None])
    def test_non_string_keys_are_rejected(self, key: Any) -> None:
        err = build_error(keys=[key])
        assert "keys[0] must be a string" in str(err)


class TestTags:
    """At most 50 tags, each 1-60 characters without '/', ',' or control characters."""

    def test_limits_are_accepted(self) -> None:
        tags = [f"t{i}" for i in range(MAX_TAGS - 1)] + ["x" * MAX_TAG_LENGTH]
        assert len(built_request(tags=tags).tags) == 50

    def test_51_tags_are_rejected(self) -> None:
        err = build_error(tags=[f"t{i}" for i in range(MAX_TAGS + 1)])
        assert err.field == "tags"
        assert "at most 50 tags" in str(err) and "got 51" in str(err)

    @pytest.mark.parametrize(
        "tag", ["x" * 61, "", "a/b", "a,b", "tab\there", "new\nline", "nul\x00"]
    )
    def test_bad_tags_are_rejected(self, tag: str) -> None:
        err = build_error(tags=["ok", tag])
        assert err.field == "tags"
        assert "1-60 characters" in str(err)

    def test_a_bare_string_is_not_split_into_tags(self) -> None:
        assert build_error(tags="team=lb").field == "tags"

    def test_none_means_no_tags(self) -> None:
        assert built_request(tags=None).tags == ()


class TestOtherFields:
    """Names, owners and lists are checked too, and the model cannot be changed afterwards."""

    @pytest.mark.parametrize("name", ["Amp", "-amp", "amp-", "a" * 64, "amp\n", "a_b", ""])
    def test_bad_names_are_rejected(self, name: str) -> None:
        assert build_error(name=name).field == "name"

    def test_a_63_character_name_is_accepted(self) -> None:
        assert built_request(name="a" * 63).name == "a" * 63

    @pytest.mark.parametrize("owner", ["", "a" * 41, "uid with spaces", "uid\n", "a/b"])
    def test_bad_owners_are_rejected(self, owner: str) -> None:
        assert build_error(owner=owner).field == "owner"

    def test_a_bad_list_item_is_named_by_position(self) -> None:
        err = build_error(sec_groups=["default", ""])
        assert err.field == "sec_groups.1"

    def test_unknown_fields_are_forbidden(self) -> None:
        with pytest.raises(ValidationError, match="extra"):
            BuildRequest(name="amp", flavor="m1.small")  # type: ignore[call-arg]

    def test_requests_are_frozen(self) -> None:
        request = BuildRequest(name="amp")
        with pytest.raises(ValidationError):
            request.name = "other"  # type: ignore[misc]

    def test_rejections_chain_the_validation_error(self) -> None:
        err = build_error(tags=["a/b"])
        assert isinstance(err.__cause__, ValidationError)

    def test_a_valid_build_reaches_active(self) -> None:
        driver = NoopDriver()
        amphora_id = driver.build(name="amp", keys=[blob_key("ssh-ed25519")], tags=["a"])
        assert driver.status(amphora_id) is AmphoraState.ACTIVE
