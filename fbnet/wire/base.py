"""What every wire model shares: the base model (unknown fields refused, nothing stored that a
database cannot hold faithfully), the request limits and the field types reused across models.

Shared by the parts of :mod:`fbnet.wire` (:mod:`fbnet.wire.runs`, :mod:`fbnet.wire.resources`); import
the models themselves from :mod:`fbnet.wire`. Only pydantic is imported here."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

DEVICE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MAX_BATCH = 1000
MAX_SAMPLES = 10_000
MAX_INT = 2_000_000_000  # fits a 32-bit INTEGER column on every engine
MAX_ID = 2**63 - 1
MAX_DEPTH = 8  # nesting of any JSON value in a request (free-form dicts included)
MAX_EXTRA_BYTES = 64 * 1024  # free-form ``extra`` / ``metadata`` as compact JSON
# Every list the API serves is paged: ``?limit=`` (default PAGE_LIMIT, at most MAX_PAGE_LIMIT: above it
# 422) and ``?cursor=`` (the ``next`` of the page before); ``next`` is null on the last page.
PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 1000
NEXT_DOC = ("more items follow: pass this as ?cursor= for the next page (a page also ends early at the "
            "server's byte cap); null on the last page")

DeviceName = Annotated[str, Field(pattern=DEVICE_NAME_PATTERN, description="slug: a-z, 0-9 and '-'")]
Platform = Literal["android", "ios", "linux", "macos", "windows", "other"]


def finite_positive(v: float | None, what: str) -> float | None:
    if v is not None and (not math.isfinite(v) or v <= 0):
        raise ValueError(f"{what} must be a finite positive number of microseconds, got {v}")
    return v


def check_json(x, path: str = "body") -> None:
    """Reject what no database stores faithfully (NUL characters, non-finite numbers) and nesting
    deeper than MAX_DEPTH; iterative, so no input can exhaust the stack."""
    todo = [(x, path, 0)]
    while todo:
        x, path, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(x, str) and "\x00" in x:
            raise ValueError(f"{path}: strings must not contain NUL characters")
        if isinstance(x, float) and not math.isfinite(x):
            raise ValueError(f"{path}: numbers must be finite, got {x}")
        if isinstance(x, dict):
            todo += [(k, path, depth + 1) for k in x] + [(v, f"{path}.{k}", depth + 1) for k, v in x.items()]
        elif isinstance(x, list | tuple):
            todo += [(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(x)]


def _bounded(d: dict) -> dict:
    if (n := len(json.dumps(d, separators=(",", ":"), default=str))) > MAX_EXTRA_BYTES:
        raise ValueError(f"{n} bytes of free-form JSON; the limit is {MAX_EXTRA_BYTES}")
    return d


# free-form provenance (``extra``, ``metadata``): at most MAX_DEPTH levels and MAX_EXTRA_BYTES
FreeForm = Annotated[dict[str, Any], AfterValidator(_bounded)]


class WireModel(BaseModel):
    """The base of every request and response body."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data):
        if isinstance(data, dict):
            for k, v in data.items():
                if not isinstance(v, float):  # floats get their own, field-specific messages
                    check_json(v, str(k))
        return data
