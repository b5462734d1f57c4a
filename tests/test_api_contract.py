"""The serving API against its own OpenAPI document, checked by an independent fuzzer (schemathesis, every check).

The app is the real router and API in a real uvicorn on 127.0.0.1, with both arms serving an untrained tagger
in process (what the answer says does not matter here, its shape and status do). Every status a request can get
is documented, every body matches its schema, and parameters declare the constraints the router enforces.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from personal import PSEUDONYMS
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from components.data.predlog import PredictionLog
from components.model.predict import Predictor
from components.model.preprocess import Preprocessing
from components.model.tagger import TaggerSpec, build_tagger
from serving.api import build_api
from serving.eventlog import EventWriter, FeedbackLog
from serving.router import RequestBook, Router, Traffic
from serving.tagging import ArmModel, PostContext
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def in_process_arm(predictor: Predictor, version: int):
    model = ArmModel(lambda _: predictor)
    model.use(version)

    async def arm(upload: bytes, context: dict):
        return model.predict([upload], [PostContext(**context)])[0]

    return arm


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("contract")
    spec = TaggerSpec("resnet18", ("cat", "dog", "meme"), Preprocessing(image_size=32, resize=36))
    predictor = Predictor(build_tagger(spec).eval())
    predictions = PredictionLog(root / "predictions")
    router = Router(
        {"champion": in_process_arm(predictor, 1), "challenger": in_process_arm(predictor, 2)},
        EventWriter(predictions, "contract"),
        EventWriter(FeedbackLog(root / "feedback"), "contract"),
        RequestBook(predictions),
        Traffic(0.5, "contract-salt", "exp-contract", 1, 2),
        pseudonyms=PSEUDONYMS,
    )

    async def loaded(version: int) -> int:
        return version

    api = build_api(router, {"champion": lambda: loaded(1), "challenger": lambda: loaded(2)}, dict)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        router.close()
        asyncio.set_event_loop(None)


@pytest.fixture(scope="module")
def api_schema(app_url: str):
    return schemathesis.openapi.from_url(f"{app_url}/openapi.json")


# (schemathesis's own pytest plugin does not run on pytest 9: its fixture loader reads a private attribute)
def test_every_operation_keeps_its_documented_contract(api_schema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        "POST /predict", "POST /feedback", "GET /healthz", "GET /readyz", "GET /ab/report.json", "GET /ab"
    }  # fmt: skip
    for operation in operations:
        # A body of any bytes is schema-valid for /predict, yet only decodable images get a 2xx: no schema can
        # say "a JPEG". Its refusals (400 empty, 415 not an image, 422 undecodable) are documented and their
        # bodies checked like every other; only the check that schema-valid data is accepted is left out there.
        excluded = [positive_data_acceptance] if operation.path == "/predict" else []
        keeps_its_contract(operation, excluded)


def keeps_its_contract(operation, excluded: list) -> None:
    """Generated requests to one operation, schema-valid and not, each response checked by every check."""

    modes = [operation.as_strategy(mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]

    @given(case=st.one_of(modes))
    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        case.call_and_validate(excluded_checks=excluded)

    check()


def test_a_refusal_has_one_shape_whatever_refused(app_url: str) -> None:
    import httpx  # noqa: PLC0415

    png = Path(__file__).with_name("files.py")  # any bytes that are not an image
    with httpx.Client(base_url=app_url) as client:
        missing = client.post("/predict", content=b"\x89PNG")  # no user_id: FastAPI's validation
        blank = client.post("/predict", params={"user_id": " "}, content=b"\x89PNG")
        text = client.post("/predict", params={"user_id": "u1"}, content=png.read_bytes())
        unknown = client.post("/feedback", json={"request_id": "nope", "event": "like"})
    assert missing.status_code == 422 and missing.json() == {"detail": "query.user_id: Field required"}
    assert blank.status_code == 422 and "user_id" in blank.json()["detail"]
    assert text.status_code == 415 and text.json()["detail"].startswith("the upload is not an image")
    assert unknown.status_code == 404 and set(unknown.json()) == {"detail"}
