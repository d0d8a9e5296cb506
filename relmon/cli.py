"""The ``relmon`` command line: one subcommand per part, and ``demo`` for all of them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from relmon.errors import ConfigError, RelmonError
from relmon.runtime import ManagedProcess
from relmon.settings import Settings, get_settings, reference

log = logging.getLogger("relmon")


def _foreground(proc: ManagedProcess, banner: str) -> int:
    """Start a child, print where it is, and wait for it; Ctrl-C stops it cleanly."""
    proc.start()
    print(f"{banner} (pid {proc.pid}, log {proc.log_path})")
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return proc.stop() or 0


def _cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from relmon.kafka import EMBEDDED_BROKER_NOTE, broker_process

    port = args.port if args.port is not None else settings.kafka.broker_port
    banner = f"tansu broker on {settings.bind_host}:{port} ({EMBEDDED_BROKER_NOTE})"
    return _foreground(broker_process(settings, port), banner)


def _cmd_store(args: argparse.Namespace, settings: Settings) -> int:
    from relmon.store import serve

    port = args.port if args.port is not None else settings.clickhouse.port
    data_dir = Path(args.dir) if args.dir else settings.store_path
    password = settings.clickhouse.password.get_secret_value() or None
    serve(data_dir, settings.bind_host, port, password=password)
    return 0


def _load_scorer(settings: Settings) -> object:
    from scoring import Scorer

    return Scorer(
        settings.scorer.model_dir,
        provider=settings.scorer.provider,
        variant=settings.scorer.variant,
        threads=settings.scorer.threads,
        max_length=settings.scorer.max_length,
        cache_size=settings.scorer.cache_size,
        calibration=settings.scorer.calibration,
        tier=settings.scorer.tier,
    )


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.app import RelmonWorker

    scorer = _load_scorer(settings)
    log.info(
        "scorer %s on %s",
        getattr(scorer, "model_version", "?"),
        getattr(scorer, "provider", "?"),
    )
    if not settings.alerts.in_worker:
        RelmonWorker(settings, scorer).run()  # type: ignore[arg-type]
        return 0
    # RELMON_ALERTS_IN_WORKER: the leader-elected alert runner in a thread beside the worker,
    # started once the worker has created the topics and tables it reads.
    from relmon.alerts.runner import AlertThread

    alerts = AlertThread(settings)
    worker = RelmonWorker(settings, scorer, gauges=alerts.gauges)  # type: ignore[arg-type]
    worker.prepare()
    alerts.start()
    try:
        worker.serve()
    finally:
        alerts.stop()
    return 0


def _replay_config(args: argparse.Namespace) -> object:
    from relmon.sim.replay import ReplayConfig
    from relmon.sim.scenario import Scenario

    return ReplayConfig(
        scenario=Scenario.load(Path(args.scenario)) if args.scenario else None,
        seed=args.seed,
        dataset=args.dataset,
        rate=args.rate,
        duration_s=args.duration,
        impressions=args.impressions,
        bad_share=args.bad_share,
        malformed_share=args.malformed_share,
        unknown_product_share=args.unknown_share,
        page_share=args.page_share,
        ubi_share=args.ubi_share,
        catalog_share=args.catalog_share,
    )


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from relmon.kafka import ensure_topics
    from relmon.sim.replay import replay

    ensure_topics(settings)
    counts = replay(
        settings,
        _replay_config(args),  # type: ignore[arg-type]
        progress=lambda p: print(
            f"\rproduced {p['produced']:>8} records, {p.get('impressions', 0):>8} impressions "
            f"in {p['elapsed_s']:>6.1f} s",
            end="",
            file=sys.stderr,
            flush=True,
        ),
    )
    print(file=sys.stderr)
    print(json.dumps(counts, sort_keys=True))
    return 0


def _cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from relmon.demo import dashboard_process

    port = args.port if args.port is not None else settings.dashboard_port
    url = f"http://{settings.bind_host}:{port}"
    return _foreground(dashboard_process(settings, port), f"dashboard on {url}")


def _cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    """Print the Markdown reference of the settings (the README's "Configuration" tables)."""
    print(reference())
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from relmon.demo import DemoOptions, run_demo
    from relmon.sim.scenario import Scenario

    result = run_demo(
        settings,
        DemoOptions(
            duration_s=args.duration,
            dashboard=not args.no_dashboard,
            rate=args.rate,
            seed=args.seed,
            dataset=args.dataset,
            scenario=Scenario.load(Path(args.scenario)) if args.scenario else None,
            alerts=not args.no_alerts,
        ),
    )
    print(json.dumps(result, sort_keys=True))
    return 0


def _cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from relmon.alerts.runner import AlertRunner, KafkaLeader
    from relmon.db import migrate

    migrate(settings)
    if args.once:
        runner = AlertRunner(settings)
        try:
            events = runner.run_once()
        finally:
            runner.close()
        for event in events:
            print(event.to_record().to_bytes().decode())
        return 0
    runner = AlertRunner(settings, leader=KafkaLeader(settings))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"alert runner (leader election on topic {settings.topics.alerts}.leader)")
    try:
        runner.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        runner.close()
    return 0


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from relmon.db import migrate

    applied = migrate(settings)
    print(json.dumps({"applied": applied}))
    return 0


def _cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.jsonschema import export

    for path in export(Path(args.out) if args.out else None or _default_schema_dir()):
        print(path)
    return 0


def _default_schema_dir() -> Path:
    from schemas.jsonschema import SHIPPED_DIR

    return SHIPPED_DIR


def _cmd_model_build(args: argparse.Namespace, settings: Settings) -> int:
    from scoring.training import build_model

    out = Path(args.out) if args.out else settings.scorer.model_dir
    kwargs: dict[str, Any] = {"seed": args.seed, "force": args.force}
    if args.train_pairs is not None:
        kwargs["train_pairs"] = args.train_pairs
    if args.epochs is not None:
        kwargs["epochs"] = args.epochs
    if args.data:
        kwargs.update(data=Path(args.data), data_format=args.format, locale=args.locale)
    if args.synthetic_pairs:
        from relmon.sim.synth import SyntheticCatalog, labelled_pairs
        from scoring.data import Example

        n, seed = args.synthetic_pairs, args.seed
        synthetic = [
            Example(q, t, y, None, "relevant" if y else "irrelevant", "synthetic")
            for q, t, y in labelled_pairs(SyntheticCatalog.generate(seed=seed), n, seed=seed)
        ]
        kwargs["extra"] = (synthetic, f"{n} SYNTHETIC pairs (relmon.sim.synth, seed {seed})")
    info = build_model(out, progress=_progress_printer(), **kwargs)
    print(file=sys.stderr)
    print(json.dumps(_as_dict(info), sort_keys=True, default=str))
    return 0


def _cmd_model_eval(args: argparse.Namespace, settings: Settings) -> int:
    from scoring.card import ModelCard
    from scoring.data import as_triples, heldout_examples_of, load_examples
    from scoring.metrics import evaluate_model
    from scoring.scorer import operating_threshold

    model_dir = Path(args.model_dir) if args.model_dir else settings.scorer.model_dir
    if args.data and not Path(args.data).exists():  # say which flag it was
        raise ConfigError(f"--data {args.data}: no such file or directory")
    examples = (
        load_examples(Path(args.data), args.format, args.locale)
        if args.data
        else heldout_examples_of(model_dir)
    )
    card = ModelCard.load(model_dir)
    report = evaluate_model(
        model_dir,
        as_triples(examples),
        threshold=(  # evaluate_model compares raw scores: the raw operating point
            settings.routing.bad_threshold
            if settings.routing.bad_threshold is not None
            else operating_threshold(card)
        ),
        grades=[e.grade for e in examples],
        max_length=settings.scorer.max_length,
    )
    report["data"] = str(Path(args.data).resolve()) if args.data else "held-out (model card)"
    out = Path(args.card_out) if args.card_out else model_dir
    out.mkdir(parents=True, exist_ok=True)
    card.model_copy(update={"evaluation": report}).save(out)  # card.md says the same
    print(f"model card: {out / 'card.json'}, {out / 'card.md'}", file=sys.stderr)
    print(json.dumps(_as_dict(report), sort_keys=True, default=str))
    return 0


def _cmd_model_embed(args: argparse.Namespace, settings: Settings) -> int:
    from relmon import db
    from streams.catalog import load_catalog_file
    from streams.vectors import ClickHouseVectors, embed_catalog

    if args.catalog:
        products = load_catalog_file(Path(args.catalog))
    elif settings.ingest.catalog_file:
        products = load_catalog_file(settings.ingest.catalog_file)
    else:
        from relmon.sim.replay import ReplayConfig, load_catalog, to_catalog_product

        replayed = load_catalog(ReplayConfig(dataset=args.dataset, seed=args.seed))
        products = [to_catalog_product(p) for p in replayed.products]
    scorer: Any = _load_scorer(settings)
    if scorer.embedder is None:
        raise ConfigError(
            "the cross-encoder tier embeds nothing: set RELMON_SCORER_TIER to card, cosine or page"
        )
    db.migrate(settings)
    vectors = ClickHouseVectors(lambda: db.connect(settings), scorer.embedder)
    scorer.share_embeddings(vectors)
    try:
        report = embed_catalog(scorer, products, progress=_progress_printer())
        report["embedder"] = scorer.embedder
        report["stored"] = vectors.count()
    finally:
        vectors.close()
    print(file=sys.stderr)
    print(json.dumps(report, sort_keys=True))
    return 0


def _as_dict(obj: object) -> object:
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)  # type: ignore[call-overload]
    return obj


def _progress_printer() -> Callable[[str], None]:
    def show(message: str) -> None:
        print(f"\r{message}", end="", file=sys.stderr, flush=True)

    return show


def _cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    import onnxruntime as ort

    from relmon.hostinfo import cpu_model, isa_flags

    report: dict[str, object] = {
        "cpu": cpu_model(),
        "isa": isa_flags(),
        "onnxruntime": ort.__version__,
        "onnxruntime_device": ort.get_device(),
        "available_providers": ort.get_available_providers(),
        "settings": json.loads(settings.model_dump_json()),
    }
    try:
        scorer: Any = _load_scorer(settings)
        report["session_provider"] = scorer.provider
        report["session_providers"] = scorer.session_providers
        report["model_variant"] = scorer.variant
        report["model_variant_pairs_per_s"] = {
            k: round(v, 1) for k, v in scorer.variant_speeds.items()
        }
        report["scorer_tier"] = scorer.tier
        report["model_version"] = scorer.model_version
        report["scorer_threads"] = scorer.threads
    except RelmonError as exc:
        report["model_error"] = str(exc)
    print(json.dumps(report, indent=2, default=str))
    return 0


def _cmd_teacher(args: argparse.Namespace, settings: Settings) -> int:
    import signal

    from relmon import db
    from relmon.kafka import ensure_topics
    from relmon.teacher import TeacherConsumer, build_judge

    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    ensure_topics(settings)
    db.migrate(settings)
    client = db.connect(settings)
    judge = build_judge(settings, client)
    if judge is None:
        log.warning(
            "RELMON_TEACHER_BASE_URL is not set: no LLM judge; review cases only fill the "
            "review queue for people (dashboard)"
        )
    else:
        log.info("teacher %s at %s", settings.teacher.model, settings.teacher.base_url)
    consumer = TeacherConsumer(settings, judge, client=client)
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop())  # finish the batch, then stop
    try:
        consumer.run()
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        print(json.dumps(consumer.totals.counts, sort_keys=True))
    return 0


def _cmd_export_distill(args: argparse.Namespace, settings: Settings) -> int:
    from relmon import db
    from relmon.teacher import export_distill

    client = db.connect(settings)
    try:
        counts = export_distill(client, Path(args.out), include_teacher=not args.human_only)
    finally:
        client.close()
    print(json.dumps({"out": str(Path(args.out).resolve()), **counts}, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``relmon``."""
    parser = argparse.ArgumentParser(
        prog="relmon",
        description="Streaming, real-time monitor of e-commerce search relevance. "
        "Configuration comes from RELMON_* environment variables (see README).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run broker, store, worker, replayer and dashboard locally")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="replay for this many seconds, drain, stop and print counts as JSON",
    )
    p.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    p.add_argument("--rate", type=float, default=100.0, help="impressions per second")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the replayed traffic (default: a new one each run, printed; the same "
        "seed replays the same impression ids, which a home that stored them skips)",
    )
    p.add_argument(
        "--dataset",
        choices=["esci", "synthetic"],
        default="esci",
        help="esci: real queries, products and human grades (default); synthetic: the "
        "synthetic catalogue",
    )
    p.add_argument(
        "--scenario",
        default=None,
        help="JSON scenario of the replayed traffic (true bad shares, shifts: see "
        "scenarios/); spikes in it page through the alert runner",
    )
    p.add_argument(
        "--no-alerts", action="store_true", help="do not run the alert runner in the worker"
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("broker", help="run the embedded tansu Kafka broker")
    p.add_argument("--port", type=int, default=None, help="port (default RELMON_BROKER_PORT)")
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("store", help="run the local ClickHouse store (chdb over HTTP)")
    p.add_argument("--port", type=int, default=None, help="port (default RELMON_CLICKHOUSE_PORT)")
    p.add_argument("--dir", default=None, help="chdb data directory (default RELMON_STORE_DIR)")
    p.set_defaults(func=_cmd_store)

    p = sub.add_parser("worker", help="run a stream worker (sample, score, route, store)")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("replay", help="push a catalogue and search traffic to Kafka")
    p.add_argument(
        "--dataset",
        choices=["esci", "synthetic"],
        default="esci",
        help="esci: real queries, products and human grades (default); synthetic: the "
        "synthetic catalogue",
    )
    p.add_argument("--rate", type=float, default=100.0, help="impressions per second (0 = max)")
    p.add_argument("--duration", type=float, default=None, help="seconds to run")
    p.add_argument("--impressions", type=int, default=None, help="stop after this many")
    p.add_argument("--seed", type=int, default=7, help="random seed")
    p.add_argument(
        "--bad-share",
        type=float,
        default=None,
        help="share of irrelevant results on every page (default: the data's own; 0.25 for "
        "synthetic)",
    )
    p.add_argument("--malformed-share", type=float, default=0.01, help="share of broken records")
    p.add_argument(
        "--unknown-share",
        type=float,
        default=0.005,
        help="share of impressions of products missing from the catalogue",
    )
    p.add_argument(
        "--page-share",
        type=float,
        default=0.5,
        help="share of pages sent as one UBI query record with query_response_hit_ids",
    )
    p.add_argument(
        "--ubi-share",
        type=float,
        default=0.2,
        help="share of pages sent as a UBI query record and UBI impression events",
    )
    p.add_argument(
        "--catalog-share",
        type=float,
        default=0.15,
        help="share of pages sent as relmon impressions without product text (the rest carry it)",
    )
    p.add_argument(
        "--scenario",
        default=None,
        help="JSON scenario: true bad shares per tier/category, shifts, traffic mix",
    )
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("dashboard", help="run the Streamlit dashboard")
    p.add_argument("--port", type=int, default=None, help="port (default RELMON_DASHBOARD_PORT)")
    p.set_defaults(func=_cmd_dashboard)

    p = sub.add_parser("alerts", help="detect bad-case-rate spikes and send alerts (leader only)")
    p.add_argument(
        "--once",
        action="store_true",
        help="judge the closed windows once, without leader election, and print the events",
    )
    p.set_defaults(func=_cmd_alerts)

    p = sub.add_parser("migrate", help="create the ClickHouse database and tables")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("settings", help="print the reference of every RELMON_* setting")
    p.set_defaults(func=_cmd_settings)

    p = sub.add_parser("doctor", help="show onnxruntime providers and the one really used")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("schemas", help="JSON Schemas of relmon's records")
    schemas_sub = p.add_subparsers(dest="schemas_command", required=True, metavar="ACTION")
    q = schemas_sub.add_parser("export", help="write the JSON Schemas generated from the models")
    q.add_argument("--out", default=None, help="directory (default: schemas/json)")
    q.set_defaults(func=_cmd_schemas)

    p = sub.add_parser("model", help="build and evaluate the cross-encoder")
    model_sub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    q = model_sub.add_parser(
        "build",
        help="fine-tune MiniLM-L6 into a cross-encoder on the real ESCI labels, export ONNX",
    )
    q.add_argument("--out", default=None, help="output directory (default RELMON_MODEL_DIR)")
    q.add_argument(
        "--train-pairs", type=int, default=None, help="subsample training pairs (quick builds)"
    )
    q.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's)")
    q.add_argument("--seed", type=int, default=13, help="random seed (and the query folds)")
    q.add_argument(
        "--data",
        default=None,
        help="more training data beside the bundled real ESCI judgments: WANDS dir, ESCI "
        "dir/parquet, CSV/TSV/JSONL of query, title, label and/or teacher_prob (e.g. the "
        "teacher loop's export)",
    )
    q.add_argument(
        "--synthetic-pairs",
        type=int,
        default=0,
        help="add this many synthetic pairs to the real training data (never alone)",
    )
    q.add_argument("--format", default="auto", choices=["auto", "wands", "esci", "pairs"])
    q.add_argument("--locale", default=None, help="ESCI product_locale filter, e.g. us")
    q.add_argument(
        "--force", action="store_true", help="publish even if worse than the current model"
    )
    q.set_defaults(func=_cmd_model_build)
    q = model_sub.add_parser("eval", help="evaluate a built model, write the model card")
    q.add_argument(
        "--data", default=None, help="labelled data, as for build (default: the card's held-out)"
    )
    q.add_argument("--format", default="auto", choices=["auto", "wands", "esci", "pairs"])
    q.add_argument("--locale", default=None, help="ESCI product_locale filter, e.g. us")
    q.add_argument("--model-dir", default=None, help="model directory (default RELMON_MODEL_DIR)")
    q.add_argument(
        "--card-out", default=None, help="write card.json/card.md here (default: model dir)"
    )
    q.set_defaults(func=_cmd_model_eval)
    q = model_sub.add_parser(
        "embed",
        help="embed a catalogue's product texts into ClickHouse ahead of its traffic "
        "(table text_embeddings, shared by the workers; texts stored already are skipped)",
    )
    q.add_argument(
        "--catalog",
        default=None,
        help="JSON Lines catalogue (default RELMON_CATALOG_FILE, else the replay's --dataset)",
    )
    q.add_argument("--dataset", choices=["esci", "synthetic"], default="esci")
    q.add_argument("--seed", type=int, default=7, help="seed of the synthetic catalogue")
    q.set_defaults(func=_cmd_model_embed)

    p = sub.add_parser(
        "teacher", help="judge review cases with an LLM (chat completions) and store verdicts"
    )
    p.set_defaults(func=_cmd_teacher)

    p = sub.add_parser("export", help="export data for the next model")
    export_sub = p.add_subparsers(dest="export_command", required=True, metavar="ACTION")
    q = export_sub.add_parser(
        "distill", help="teacher- and human-labelled pairs as JSON Lines for `model build --data`"
    )
    q.add_argument("--out", required=True, help="output file (.jsonl)")
    q.add_argument("--human-only", action="store_true", help="leave out the teacher's verdicts")
    q.set_defaults(func=_cmd_export_distill)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; configuration and service errors exit with status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("kafka").setLevel(logging.WARNING)  # connection chatter
    try:
        settings = get_settings()
        return int(args.func(args, settings) or 0)
    except RelmonError as exc:
        print(f"relmon: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
