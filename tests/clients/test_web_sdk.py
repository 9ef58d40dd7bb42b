"""The web SDK (``clients/web``): its own tests under Node's test runner; the envelopes it makes, judged by the
inlet's decoding and validation and by identity extraction; and the SDK sending to a real inlet over loopback, so that
neither what it sends nor how it reads the inlet's 207 can drift from the inlet."""

import json
import shutil
import time
from pathlib import Path

import pytest

from identity.namespaces import IdentityRules, NamespaceRegistry, extract_identities
from schemas.registry import SchemaRegistry
from service.inlet import Accepted, Inlet, Judge, Receipt
from service.settings import InletConnection, InletSettings
from tests.conftest import missing_prerequisite
from tests.helpers import finished
from tests.service.test_api import running_server
from tests.service.test_inlet import FakePublisher, app_with

WEB_SDK = Path(__file__).parents[2] / "clients" / "web"
NODE_TIMEOUT_S = 120.0
OUTPUT_TAIL_CHARS = 4000


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


def node() -> str:
    binary = shutil.which("node")
    if binary is None:
        missing_prerequisite("node not found (Node.js 20 or later runs the web SDK's tests)")
    return binary


def test_the_sdks_node_tests_pass() -> None:
    tests = sorted(str(path) for path in (WEB_SDK / "test").glob("*.test.js"))
    result = finished([node(), "--test", *tests], NODE_TIMEOUT_S)
    assert result.returncode == 0, (result.stdout + result.stderr)[-OUTPUT_TAIL_CHARS:]


def test_the_sdks_envelopes_pass_the_inlets_validation_and_identity_rules(registry) -> None:
    result = finished([node(), str(WEB_SDK / "scripts" / "envelopes.js")], NODE_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-OUTPUT_TAIL_CHARS:]
    receipt = Receipt("web", int(time.time() * 1000), "1:sdk:0")
    verdicts = Judge(registry).batch(result.stdout.encode(), receipt, InletConnection(), sync_validation=True)

    assert [type(verdict) for verdict in verdicts] == [Accepted] * 3, verdicts
    entities = [message["body"]["xdmEntity"] for message in json.loads(result.stdout)["messages"]]
    assert [entity["eventType"] for entity in entities] == [
        "web.webpagedetails.pageViews",
        "web.webinteraction.linkClicks",
        "commerce.productViews",
    ]
    extractions = [extract_identities(entity, NamespaceRegistry(), IdentityRules()) for entity in entities]
    assert [extraction.rejections for extraction in extractions] == [(), (), ()]
    assert [sorted({identity.namespace for identity in extraction.identities}) for extraction in extractions] == [
        ["ECID"],
        ["ECID"],
        ["CRMID", "ECID", "Email"],
    ]


def test_the_sdk_sends_to_a_real_inlet_and_drops_only_what_it_rejects(registry) -> None:
    publisher = FakePublisher()
    inlet = Inlet(InletSettings(connections={"web": InletConnection()}), Judge(registry), publisher, environ={})
    with running_server(app_with(inlet)) as url:
        result = finished([node(), str(WEB_SDK / "scripts" / "send.js"), url, "web"], NODE_TIMEOUT_S)

    assert result.returncode == 0, result.stderr[-OUTPUT_TAIL_CHARS:]
    outcome = json.loads(result.stdout)
    assert outcome["queued"] == 0
    assert [(error["status"], error["dropped"]) for error in outcome["errors"]] == [(207, 1)]
    published = [json.loads(data)["body"]["xdmEntity"] for data, _ in publisher.published]
    assert [entity["eventType"] for entity in published] == ["web.webpagedetails.pageViews", "commerce.productViews"]
    assert {attributes["connectionId"] for _, attributes in publisher.published} == {"web"}
