"""The Label Studio project annotators work in, through label-studio-sdk.

One project per platform, found by its title: an image-classification config whose
choices are the label set plus "other / new trend" (with a text box to name the
trend), tasks that carry the post's image, caption and hashtags with the model's
prediction attached, and the project's ``model_version`` kept on the newest
predictions so "Uncertainty sampling" orders tasks by the right scores. Every call
to the server goes through ``_call``, which turns the SDK's and httpx's exceptions
into a one-line ``LabelingError``. A call that creates something is sent once (``ONCE``): the SDK
would send it again when the connection drops or the server answers 5xx, and a request Label Studio carried out
before its answer was lost would then make a second copy (tests/test_labelstudio_faults.py); the caller finds what
was made instead (a push asks ``tasks_for``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr

import httpx

from active_learning.consensus import OTHER, normalise_trend
from active_learning.queue import Annotation
from components.errors import LabelingError

if TYPE_CHECKING:
    from label_studio_sdk.core.api_error import ApiError
    from label_studio_sdk.core.request_options import RequestOptions

T = TypeVar("T")
CHOICES, TREND, IMAGE = "label", "trend", "image"  # control tag names in the labelling config
FILTER_CHUNK = 100  # post ids per Data Manager filter
ONCE: RequestOptions = {"max_retries": 0}  # a create: never resent by the SDK (see the docstring above)


def label_config(labels: Sequence[str]) -> str:
    """The labelling interface: the image beside the post's hashtags and caption, one choice, a name for a new trend.

    Side by side, so that the image, every choice and Submit fit one screen from 1366x768 up: stacked, Label
    Studio sizes the image to the window's height (its ``maxHeight`` defaults to ``calc(100vh - 194px)``) and
    the choices sit below the fold. The right column is narrow (a label is a word or two) and leaves the image
    the rest of the width; a long caption scrolls in a box of its own (hashtags first: they are short), so the
    choices never move down. At 1366x768 the column holds about 13 labels and "other" with the name box open
    (each choice takes 23 px); tests/test_labelstudio.py::test_the_labelling_page_fits_one_screen checks 11.
    """
    choices = "\n".join(f"      <Choice value={quoteattr(label)}/>" for label in [*labels, OTHER])
    return f"""<View style="display: flex; gap: 24px; align-items: flex-start">
  <View style="flex: 1 1 0; min-width: 0">
    <Image name="{IMAGE}" value="$image" zoom="true"/>
  </View>
  <View style="flex: 0 0 280px">
    <View style="max-height: 8em; overflow-y: auto">
      <Text name="hashtags" value="$hashtags"/>
      <Text name="caption" value="$caption"/>
    </View>
    <Header value="What is this post about?" size="5"/>
    <Choices name="{CHOICES}" toName="{IMAGE}" choice="single-radio" required="true">
{choices}
    </Choices>
    <View visibleWhen="choice-selected" whenTagName="{CHOICES}" whenChoiceValue={quoteattr(OTHER)}>
      <Header value="Name the new trend (one or two words)" size="5"/>
      <TextArea name="{TREND}" toName="{IMAGE}" rows="1" maxSubmissions="1" editable="true"/>
    </View>
  </View>
</View>"""


def config_labels(config: str) -> list[str]:
    """The labels a config offers, in order, without the "other / new trend" choice."""
    root = ElementTree.fromstring(config)
    for tag in root.iter("Choices"):
        if tag.get("name") == CHOICES:
            return [c.get("value") for c in tag.iter("Choice") if c.get("value") != OTHER]
    return []


def choice_result(choice: str, trend: str | None = None) -> list[dict]:
    """An annotation's or prediction's ``result``: the choice, and the trend's name if one is typed."""
    result = [{"from_name": CHOICES, "to_name": IMAGE, "type": "choices", "value": {"choices": [choice]}}]
    if trend:
        result.append({"from_name": TREND, "to_name": IMAGE, "type": "textarea", "value": {"text": [trend]}})
    return result


def parse_annotation(task_id: int, post_id: str, raw: dict) -> Annotation:
    choice = trend = None
    for item in raw.get("result") or []:
        value = item.get("value") or {}
        if item.get("from_name") == CHOICES and value.get("choices"):
            choice = value["choices"][0]
        elif item.get("from_name") == TREND and value.get("text"):
            trend = normalise_trend(" ".join(value["text"]))
    return Annotation(
        annotation_id=int(raw["id"]),
        task_id=task_id,
        post_id=post_id,
        annotator=raw.get("completed_by"),
        choice=choice,
        trend=trend,
        cancelled=bool(raw.get("was_cancelled")),
        updated_at=ls_time(raw.get("updated_at")),
    )


def annotations_of(task: Any) -> list[dict]:
    """A listed task's annotations as dicts (the SDK gives dicts or models, depending on the listing)."""
    return [a if isinstance(a, dict) else a.model_dump() for a in task.annotations or []]


def ls_time(value: Any) -> str | None:
    """Label Studio's own time format for filters: 2026-01-05T10:00:00.000000Z."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _filters(conjunction: str, items: list[dict]) -> str:
    return json.dumps({"filters": {"conjunction": conjunction, "items": items}, "ordering": ["tasks:updated_at"]})


class LabelingProject:
    """The project called ``title`` on the Label Studio at ``url``, created on first use."""

    def __init__(self, url: str, token: str, title: str, timeout: float = 30.0):
        from label_studio_sdk import LabelStudio  # noqa: PLC0415 - the SDK imports slowly: only its users pay

        self.url, self.title = url.rstrip("/"), title
        self.client = LabelStudio(base_url=self.url, api_key=token, timeout=timeout)
        self._id: int | None = None

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from label_studio_sdk.core.api_error import ApiError  # noqa: PLC0415

        try:
            return fn()
        except httpx.TransportError as err:  # refused, reset, timed out, DNS
            raise LabelingError(
                f"Label Studio at {self.url} is unreachable while trying to {what}: {type(err).__name__}: {err}"
            ) from None
        except ApiError as err:
            raise LabelingError(f"Label Studio refused to {what}: HTTP {err.status_code}: {_detail(err)}") from None

    # -- the project -------------------------------------------------------------------

    @property
    def id(self) -> int:
        if self._id is None:
            found = self._find()
            if found is None:
                raise LabelingError(f"Label Studio at {self.url} has no project {self.title!r} yet; push a batch first")
            self._id = found
        return self._id

    def _find(self) -> int | None:
        projects = self._call("list projects", lambda: list(self.client.projects.list(title=self.title)))
        exact = sorted(p.id for p in projects if p.title == self.title)
        return exact[0] if exact else None

    def ensure(self, labels: Sequence[str], *, overlap: int = 1, local_files: Path | None = None) -> int:
        """Create the project, or bring it up to date: every label offered, ``overlap`` annotations per task.

        Labels are only ever added (annotations already made keep their choice).
        ``local_files`` is a folder on the server's disk that tasks' images are read
        from (a local-files storage is connected to it once).
        """
        found = self._find()
        if found is None:
            project = self._call(
                "create the project",
                lambda: self.client.projects.create(
                    title=self.title,
                    description="Posts the tagger is least sure about; pick what each is about.",
                    label_config=label_config(labels),
                    sampling="Uncertainty sampling",  # lowest prediction score first
                    maximum_annotations=overlap,
                    show_collab_predictions=True,
                    request_options=ONCE,
                ),
            )
            self._id = project.id
        else:
            self._id = found
            project = self._call("read the project", lambda: self.client.projects.get(found))
            offered = config_labels(project.label_config)
            wanted = offered + [label for label in labels if label not in offered]
            update: dict[str, Any] = {}
            if wanted != offered:
                update["label_config"] = label_config(wanted)
            if project.maximum_annotations != overlap:
                update["maximum_annotations"] = overlap
            if update:
                self._call("update the project", lambda: self.client.projects.update(found, **update))
        if local_files is not None:
            self._ensure_local_files(local_files)
        return self._id

    def set_model_version(self, version: str) -> None:
        """Order tasks by this version's prediction scores; Label Studio accepts it once tasks carry its predictions."""
        project = self._call("read the project", lambda: self.client.projects.get(self.id))
        if project.model_version != version:
            self._call("set the model version", lambda: self.client.projects.update(self.id, model_version=version))

    def _ensure_local_files(self, folder: Path) -> None:
        storage = self.client.import_storage.local
        existing = self._call("list local storages", lambda: storage.list(project=self.id))
        if not any(Path(s.path or "") == folder for s in existing):
            self._call(
                "connect the image store",
                lambda: storage.create(
                    project=self.id,
                    path=str(folder),
                    title="trendloop store",
                    use_blob_urls=False,
                    request_options=ONCE,
                ),
            )

    def labels(self) -> list[str]:
        """The labels annotators can pick now."""
        project = self._call("read the project", lambda: self.client.projects.get(self.id))
        return config_labels(project.label_config)

    # -- tasks -------------------------------------------------------------------------

    def tasks_for(self, post_ids: Sequence[str]) -> dict[str, int]:
        """post_id -> task id for the posts the project already holds a task of."""
        found: dict[str, int] = {}
        for start in range(0, len(post_ids), FILTER_CHUNK):
            items = [
                {"filter": "filter:tasks:data.post_id", "operator": "equal", "type": "String", "value": p}
                for p in post_ids[start : start + FILTER_CHUNK]
            ]
            query = _filters("or", items)
            for task in self._call(
                "look up tasks", lambda q=query: list(self.client.tasks.list(project=self.id, query=q, page_size=500))
            ):
                found.setdefault(task.data["post_id"], task.id)
        return found

    def delete_tasks(self, task_ids: Sequence[int]) -> int:
        """Delete these tasks (their annotations and predictions go with them); returns how many were deleted."""
        for task_id in task_ids:
            self._call(f"delete task {task_id}", lambda t=task_id: self.client.tasks.delete(str(t)))
        return len(task_ids)

    def import_tasks(self, tasks: list[dict]) -> int:
        """Create tasks (with their predictions) in one request; returns how many were created."""
        result = self._call(
            "import tasks",
            lambda: self.client.projects.import_tasks(
                self.id, request=tasks, return_task_ids=True, request_options=ONCE
            ),
        )
        return int(result.task_count or 0)

    def annotated_tasks(self, since: str | None = None, page_size: int = 100) -> Iterator[Any]:
        """Tasks with annotations, least recently updated first; only those updated at or after ``since``."""
        items = [{"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}]
        if since:
            items.append(
                {
                    "filter": "filter:tasks:updated_at",
                    "operator": "greater_or_equal",
                    "type": "Datetime",
                    "value": since,
                }
            )
        yield from self._pages("pull annotations", _filters("and", items), page_size)

    def tasks_below(self, annotations: int, page_size: int = 100) -> Iterator[Any]:
        """Tasks with fewer than ``annotations`` annotations."""
        items = [
            {"filter": "filter:tasks:total_annotations", "operator": "less", "type": "Number", "value": annotations}
        ]
        yield from self._pages("list open tasks", _filters("and", items), page_size)

    def _pages(self, what: str, query: str, page_size: int) -> Iterator[Any]:
        """Every task the query matches, one page per request (Label Studio answers 404 past the last page)."""
        page = 1
        while True:
            try:
                items = self._call(
                    what,
                    lambda n=page: (
                        self.client.tasks.list(
                            project=self.id, query=query, fields="all", page=n, page_size=page_size
                        ).items
                    ),
                )
            except LabelingError as err:
                if page > 1 and "HTTP 404" in str(err):
                    return
                raise
            yield from items or []
            if not items or len(items) < page_size:
                return
            page += 1

    # -- annotations ---------------------------------------------------------------------

    def annotate(self, task_id: int, choice: str, trend: str | None = None, annotator: int | None = None) -> int:
        """Submit one annotation, as ``annotator`` (a user id) when given; returns its id."""
        task_id = int(task_id)  # numpy integers do not serialise
        extra = {"completed_by": int(annotator)} if annotator is not None else {}
        made = self._call(
            f"annotate task {task_id}",
            lambda: self.client.annotations.create(
                id=task_id, result=choice_result(choice, trend), **extra, request_options=ONCE
            ),
        )
        return int(made.id)

    def annotator_ids(self, names: Sequence[str], domain: str = "annotators.trendloop.local") -> dict[str, int]:
        """User ids for annotator accounts ``name@domain``, creating the missing ones."""
        users = {u.email: u.id for u in self._call("list users", lambda: list(self.client.users.list()))}
        ids = {}
        for name in names:
            email = f"{name}@{domain}"
            if email not in users:
                user = self._call(
                    f"create user {email}",
                    lambda e=email, n=name: self.client.users.create(username=n, email=e, request_options=ONCE),
                )
                users[email] = user.id
            ids[name] = users[email]
        return ids


def _detail(err: ApiError) -> str:
    body = err.body
    if isinstance(body, dict):
        parts = [str(body.get("detail") or "")]
        if body.get("validation_errors"):
            parts.append(json.dumps(body["validation_errors"])[:300])
        return " ".join(p for p in parts if p) or json.dumps(body)[:300]
    text = str(body or "").strip()
    return "(an HTML error page)" if text.startswith("<") else text[:300]
