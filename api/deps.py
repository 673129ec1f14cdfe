"""Dependencies: the app's settings, model, writer and database connections."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated

import psycopg
from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError

from api.errors import database_unavailable
from api.runtime.model_manager import LoadedModel, ModelManager
from api.runtime.writer import PredictionWriter
from ml.platform import db
from ml.platform.config import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_manager(request: Request) -> ModelManager:
    return request.app.state.models


async def get_writer(request: Request) -> PredictionWriter:
    return request.app.state.writer


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[ModelManager, Depends(get_manager)]
WriterDep = Annotated[PredictionWriter, Depends(get_writer)]


def no_champion_detail(settings: Settings) -> str:
    return (
        f"no champion model yet: registered model {settings.model_name!r} has no "
        f"{settings.champion_alias!r} alias. Train and promote a model first; the API picks it up "
        f"within {settings.model_poll_seconds:g}s, without a restart."
    )


async def current_model(manager: ManagerDep, settings: SettingsDep) -> LoadedModel:
    """The model for this request, read once: one consistent (model, version) pair."""
    loaded = manager.current
    if loaded is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=no_champion_detail(settings))
    return loaded


ModelDep = Annotated[LoadedModel, Depends(current_model)]


def connect_db(settings: Settings, timeout: int = 5) -> psycopg.Connection:
    url = db.database_url(settings, start_embedded=False)
    return psycopg.connect(url, connect_timeout=timeout, application_name="sentiment-api")


@contextmanager
def open_db(settings: Settings) -> Iterator[psycopg.Connection]:
    """A connection that commits when the block ends without error (before the route returns,
    so a 2xx means committed); 503 when the database cannot be reached, or the connection is
    lost inside the block (nothing committed then)."""
    try:
        conn = connect_db(settings)
    except (psycopg.OperationalError, db.DatabaseUnavailable) as exc:
        raise database_unavailable(exc) from exc
    try:
        with conn:
            yield conn
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise database_unavailable(exc) from exc


# ---------------------------------------------------------------- limits from the settings
def invalid(loc: Sequence[str | int], msg: str, type_: str) -> RequestValidationError:
    """A 422 in FastAPI's own validation-error shape."""
    return RequestValidationError([{"type": type_, "loc": tuple(loc), "msg": msg}])


def check_text_length(text: str, settings: Settings, loc: Sequence[str | int]) -> None:
    if len(text) > settings.max_text_chars:
        raise invalid(
            loc,
            f"text is too long: {len(text)} characters, the limit is {settings.max_text_chars}",
            "string_too_long",
        )


def check_batch(texts: list[str], settings: Settings) -> None:
    limit = settings.max_batch_size
    if not texts:
        raise invalid(("body", "texts"), f"texts is empty: send between 1 and {limit} texts", "too_short")
    if len(texts) > limit:
        raise invalid(
            ("body", "texts"), f"batch too large: {len(texts)} texts, the limit is {limit} per request", "too_long"
        )
    for i, text in enumerate(texts):
        check_text_length(text, settings, ("body", "texts", i))
