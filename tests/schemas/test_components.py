"""Composition of XDM classes, field groups and tenant objects into field trees (schemas.components)."""

import json

import pytest

from schemas.components import Field, UnknownComponentError, compose
from schemas.names import storage_name
from schemas.registry import CONTRACT_FILE

EXPERIENCE_EVENT = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE = "https://ns.adobe.com/xdm/context/profile"
WEB_DETAILS = "https://ns.adobe.com/xdm/context/experienceevent-web"
ENVIRONMENT_DETAILS = "https://ns.adobe.com/xdm/context/experienceevent-environment-details"
EMAIL_CLICKED = "https://ns.adobe.com/xdm/mixins/events/emailclicked"
MEASURE = "https://ns.adobe.com/xdm/data/measure"
TENANT = "_tenant"
LOYALTY_TENANT = {
    "type": "object",
    "properties": {
        "loyaltyTier": {"type": "string"},
        "xdm:points": {"type": "integer"},
        "visits": {"$ref": MEASURE},
        "tags": {"type": "array"},
        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
    },
    "required": ["loyaltyTier"],
}


def _field_groups(class_id: str) -> list[str]:
    """The field groups the contract file composes with a class."""
    entries = json.loads(CONTRACT_FILE.read_text())["schemas"]
    return next(entry["fieldGroups"] for entry in entries if entry["class"] == class_id)


def _at(field: Field, path: str) -> Field:
    """The field at a dotted path of runtime names; ``*`` steps into an array's item or a map's value."""
    for name in path.split("."):
        field = field.item if name == "*" else field.children[name]
    return field


@pytest.fixture(scope="module")
def event() -> Field:
    return compose(EXPERIENCE_EVENT, _field_groups(EXPERIENCE_EVENT), TENANT, None)


@pytest.fixture(scope="module")
def profile() -> Field:
    return compose(PROFILE, _field_groups(PROFILE), TENANT, None)


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("_id", "string"),
        ("timestamp", "string"),
        ("eventType", "string"),
        ("identityMap", "map"),
        ("web.webPageDetails.URL", "string"),
        ("commerce.order.priceTotal", "number"),
        ("productListItems", "array"),
        ("productListItems.*.quantity", "integer"),
        ("environment.browserDetails.cookiesEnabled", "boolean"),
        (TENANT, "json"),
    ],
)
def test_experience_event_has_the_field(event, path, kind):
    assert _at(event, path).kind == kind


def test_experience_event_identity_map_is_a_map_of_arrays_of_identity_items(event):
    item = _at(event, "identityMap.*.*")
    assert (_at(event, "identityMap.*").kind, item.kind) == ("array", "object")
    assert {name: child.kind for name, child in item.children.items()} == {
        "id": "string",
        "authenticatedState": "string",
        "primary": "boolean",
    }


def test_experience_event_authenticated_state_is_an_enum(event):
    assert _at(event, "identityMap.*.*.authenticatedState").enum == {"ambiguous", "authenticated", "loggedOut"}


def test_experience_event_timestamp_is_a_date_time(event):
    assert _at(event, "timestamp").format == "date-time"


def test_experience_event_requires_id_and_timestamp(event):
    assert set(event.required) == {"_id", "timestamp"}


def test_experience_event_keys_children_by_runtime_name(event):
    assert not [name for name in event.children if name.startswith("xdm:") or name.startswith("@")]


@pytest.mark.parametrize(("sent", "runtime"), [("xdm:timestamp", "timestamp"), ("@id", "_id"), ("_id", "_id")])
def test_experience_event_accepts_compatibility_names(event, sent, runtime):
    assert event.accepts[sent] == runtime


def test_nested_objects_accept_compatibility_names(event):
    assert _at(event, "web").accepts["xdm:webPageDetails"] == "webPageDetails"


def test_storage_names_are_accepted(event):
    geo = _at(event, "placeContext.geo")
    assert geo.accepts[storage_name("schema:latitude")] == "schema:latitude"


def test_a_measure_requires_its_value(event):
    assert _at(event, "web.webPageDetails.pageViews").required == ("value",)


def test_unknown_class_raises_unknown_component_error():
    with pytest.raises(UnknownComponentError):
        compose("https://example.com/no-such-class", [], TENANT, None)


def test_unknown_field_group_raises_unknown_component_error():
    with pytest.raises(UnknownComponentError, match="no-such-group"):
        compose(EXPERIENCE_EVENT, ["https://example.com/no-such-group"], TENANT, None)


def test_unknown_component_error_is_a_key_error():
    assert issubclass(UnknownComponentError, KeyError)


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("person.name.firstName", "string"),
        ("personalEmail.address", "string"),
        ("extSourceSystemAudit.lastUpdatedDate", "string"),
        ("consents", "object"),
        ("consents.marketing.email.val", "string"),
        ("identityMap", "map"),
    ],
)
def test_profile_has_the_field(profile, path, kind):
    assert _at(profile, path).kind == kind


def test_profile_email_address_has_the_email_format(profile):
    assert _at(profile, "personalEmail.address").format == "email"


def test_profile_last_updated_date_is_a_date_time(profile):
    assert _at(profile, "extSourceSystemAudit.lastUpdatedDate").format == "date-time"


def test_profile_class_requires_nothing(profile):
    assert profile.required == ()


def test_tenant_schema_with_properties_becomes_an_object_field():
    tenant = compose(EXPERIENCE_EVENT, [], TENANT, LOYALTY_TENANT).children[TENANT]
    assert tenant.kind == "object"
    assert tenant.children["loyaltyTier"].kind == "string"


def test_tenant_properties_take_runtime_names():
    tenant = compose(EXPERIENCE_EVENT, [], TENANT, LOYALTY_TENANT).children[TENANT]
    assert tenant.accepts["xdm:points"] == "points"
    assert tenant.children["points"].kind == "integer"


def test_tenant_required_fields_are_kept():
    tenant = compose(EXPERIENCE_EVENT, [], TENANT, LOYALTY_TENANT).children[TENANT]
    assert tenant.required == ("loyaltyTier",)


def test_tenant_schema_may_refer_to_library_components():
    visits = compose(EXPERIENCE_EVENT, [], TENANT, LOYALTY_TENANT).children[TENANT].children["visits"]
    assert (visits.kind, visits.required, visits.children["value"].kind) == ("object", ("value",), "number")


def test_array_without_items_is_kept_as_json():
    tenant = compose(EXPERIENCE_EVENT, [], TENANT, LOYALTY_TENANT).children[TENANT]
    assert tenant.children["tags"].kind == "json"


def test_object_with_additional_properties_schema_is_a_map():
    scores = compose(EXPERIENCE_EVENT, [], TENANT, LOYALTY_TENANT).children[TENANT].children["scores"]
    assert (scores.kind, scores.item.kind) == ("map", "number")


def test_tenant_is_accepted_under_its_storage_name():
    root = compose(EXPERIENCE_EVENT, [], "_acme-co", None)
    assert root.accepts[storage_name("_acme-co")] == "_acme-co"


def test_composition_is_cut_to_json_beyond_the_depth_limit():
    deep: dict = {"type": "string"}
    for _ in range(20):
        deep = {"type": "object", "properties": {"next": deep}}
    field = compose(EXPERIENCE_EVENT, [], TENANT, deep).children[TENANT]
    depth = 0
    while field.kind == "object":
        field, depth = field.children["next"], depth + 1
    assert field.kind == "json"
    assert depth < 20


@pytest.mark.parametrize("groups", [[WEB_DETAILS, EMAIL_CLICKED], [EMAIL_CLICKED, WEB_DETAILS]])
def test_field_groups_extending_one_object_add_up(groups):
    # Web Details declares web.webPageDetails; Email Clicked declares web.webInteraction.linkClicks (and more).
    web = compose(EXPERIENCE_EVENT, groups, TENANT, None).children["web"]
    assert {"webPageDetails", "webReferrer", "webInteraction"} <= set(web.children)


@pytest.mark.parametrize("groups", [[ENVIRONMENT_DETAILS, EMAIL_CLICKED], [EMAIL_CLICKED, ENVIRONMENT_DETAILS]])
def test_field_groups_extending_one_object_add_up_in_either_order(groups):
    device = compose(EXPERIENCE_EVENT, groups, TENANT, None).children["device"]
    assert {"isMobileDevice", "screenHeight"} <= set(device.children)


def test_leaf_count_counts_scalar_leaves(event):
    assert _at(event, "identityMap").leaf_count() == 3


def test_leaf_count_of_a_measure_is_its_two_leaves(event):
    assert _at(event, "web.webPageDetails.pageViews").leaf_count() == 2


def test_array_items_declared_twice_add_up():
    tenant_schema = {
        "allOf": [
            {"properties": {"visits": {"type": "array", "items": {"properties": {"page": {"type": "string"}}}}}},
            {"properties": {"visits": {"type": "array", "items": {"properties": {"seconds": {"type": "integer"}}}}}},
        ]
    }
    visits = compose(EXPERIENCE_EVENT, [], TENANT, tenant_schema).children[TENANT].children["visits"]
    assert {name: child.kind for name, child in visits.item.children.items()} == {
        "page": "string",
        "seconds": "integer",
    }
