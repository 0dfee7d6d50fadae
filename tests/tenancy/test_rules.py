"""The tenancy rules as pure functions: namespace tags, import scope, reserved tags, claims."""

from __future__ import annotations

from amphora_drivers.types import MAX_TAG_LENGTH, AmphoraInstance, AmphoraState, AmphoraType
from amphora_operator.config import OperatorConfig
from amphora_operator.tenancy import (
    NAMESPACE_TAG_PREFIX,
    ImportRules,
    claimed,
    import_refusal,
    import_rules,
    namespace_tag,
    owner_uid,
    tags_refusal,
)

RULES = ImportRules(profile="nova")


def instance(*tags: str, owner: str | None = None, id: str = "i-1") -> AmphoraInstance:
    return AmphoraInstance(
        id=id, name="x", amphora_type=AmphoraType.VM, state=AmphoraState.ACTIVE,
        raw_state="ACTIVE", tags=tags, owner=owner,
    )  # fmt: skip


def test_namespace_tags_fit_nova_and_never_collide() -> None:
    assert namespace_tag("team-a") == f"{NAMESPACE_TAG_PREFIX}team-a"
    long_a, long_b = "a" * 62 + "x", "a" * 62 + "y"
    for ns in (long_a, long_b):
        assert len(namespace_tag(ns)) <= MAX_TAG_LENGTH
    assert namespace_tag(long_a) != namespace_tag(long_b)
    assert namespace_tag("team-a") != namespace_tag("team-b")


def test_an_instance_built_for_the_same_namespace_is_importable() -> None:
    assert (
        import_refusal(instance(namespace_tag("a")), import_id="i-1", namespace="a", rules=RULES)
        is None
    )


def test_another_namespaces_instance_is_refused_naming_the_rule() -> None:
    refusal = import_refusal(
        instance(namespace_tag("b")), import_id="i-1", namespace="a", rules=RULES
    )
    assert refusal is not None
    assert (refusal.field, refusal.reason) == ("spec.importId", "ImportRefused")
    assert "same namespace" in refusal.message and "imports.allowedNamespaces" in refusal.message
    assert "'b'" not in refusal.message, "the refusal must not reveal the owner's namespace"


def test_an_untagged_instance_needs_the_profile_to_allow_it() -> None:
    assert import_refusal(instance(), import_id="i-1", namespace="a", rules=RULES) is not None
    by_namespace = ImportRules("nova", allowed_namespaces=frozenset({"admin"}))
    assert (
        import_refusal(instance(), import_id="i-1", namespace="admin", rules=by_namespace) is None
    )
    assert (
        import_refusal(instance(), import_id="i-1", namespace="a", rules=by_namespace) is not None
    )
    by_tag = ImportRules("nova", required_tag="importable")
    assert (
        import_refusal(instance("importable"), import_id="i-1", namespace="a", rules=by_tag) is None
    )
    assert (
        import_refusal(instance("other"), import_id="i-1", namespace="a", rules=by_tag) is not None
    )


def test_a_missing_instance_is_refused_like_a_forbidden_one() -> None:
    """Else a tenant could tell another namespace's instance ids from unused ones."""
    forbidden = import_refusal(instance(namespace_tag("b")), import_id="i-1", namespace="a",
                               rules=RULES)  # fmt: skip
    missing = import_refusal(None, import_id="i-1", namespace="a", rules=RULES)
    assert missing is not None and missing == forbidden
    # A namespace that may import any instance learns nothing new: the planner's ImportNotFound.
    anything = ImportRules("nova", allowed_namespaces=frozenset({"a"}))
    assert import_refusal(None, import_id="i-1", namespace="a", rules=anything) is None


def test_a_claimed_instance_is_refused_even_in_its_own_namespace() -> None:
    refusal = import_refusal(
        instance(namespace_tag("a")), import_id="i-1", namespace="a", rules=RULES, claimed=True
    )
    assert refusal is not None and "Orphan" in refusal.message


def test_user_tags_cannot_forge_a_namespace_or_the_import_tag() -> None:
    forged = tags_refusal(["ok", namespace_tag("b")], RULES)
    assert forged is not None and forged.reason == "ReservedTag"
    assert forged.message.startswith("spec.tags[1]:")
    rules = ImportRules("nova", required_tag="importable")
    refusal = tags_refusal(["importable"], rules)
    assert refusal is not None and "imports.requiredTag" in refusal.message
    assert tags_refusal(["ok", "web"], rules) is None


def body(uid: str, *, compute_id: str | None = None, deleting: bool = False) -> dict[str, object]:
    meta: dict[str, object] = {"uid": uid, "name": uid, "namespace": "a"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"computeId": compute_id} if compute_id else {}}


def test_claims_by_status_id_or_owner_uid_but_not_by_itself_or_a_releasing_amphora() -> None:
    uid = "0b6c3f8e-1111-2222-3333-444455556666"
    found = instance(owner=f"{uid.replace('-', '')}-2", id="i-9")
    assert owner_uid(found.owner) == uid.replace("-", "")
    assert claimed(found, "me", [body(uid)])
    assert claimed(instance(id="i-9"), "me", [body("other", compute_id="i-9")])
    assert not claimed(instance(id="i-9"), "me", [body("me", compute_id="i-9")])
    assert not claimed(found, "me", [body(uid, deleting=True)])
    assert not claimed(instance(id="i-9"), "me", [body("other", compute_id="i-8")])


def test_profiles_carry_import_rules_from_the_config_file() -> None:
    config = OperatorConfig.model_validate(
        {"profiles": {"nova": {"driver": "nova", "imports": {
            "allowedNamespaces": ["admin"], "requiredTag": "importable"}}}}
    )  # fmt: skip
    rules = import_rules("nova", config.profiles["nova"])
    assert rules == ImportRules("nova", frozenset({"admin"}), "importable")
