"""The ``streamctr`` command line (design.md, "CLI").

Every command takes ``--config FILE`` (TOML: top-level keys and a table named
after the command) and ``STREAMCTR_<OPTION>`` environment overrides; flags win
over both. Bad input ends the command with exit status 2 and one line on stderr
saying why; a failure while running (broker unreachable, …) with status 1.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from kafka.errors import KafkaError

from features.importers import DATASETS, DatasetError
from features.joiner import JoinerConfig
from learners import LEARNERS, LearnerError
from pipeline.broker import BrokerError
from pipeline.checkpoint import CheckpointError
from pipeline.config import (
    ConfigError,
    Options,
    learner_params,
    parse_bool,
    parse_duration_ms,
    parse_names,
)
from replay.inputs import ReplayInput, ReplayInputError
from replay.kafka_input import parse_time_ms

__all__ = ["main"]

log = logging.getLogger("streamctr")

# Errors that mean "the input or configuration is wrong": one line, exit status 2.
_BAD_INPUT = (ConfigError, ReplayInputError, DatasetError, LearnerError, CheckpointError,
              ValueError)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage; a one-line reason (plus where to look) is enough.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _choices(what: str, allowed: Sequence[str]) -> Callable[[str | list[str]], tuple[str, ...]]:
    """A converter of a comma-separated list whose items must be in ``allowed``."""

    def convert(text: str | list[str]) -> tuple[str, ...]:
        names = parse_names(text)
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise ValueError(f"unknown {what}(s) {', '.join(unknown)}; available: "
                             f"{', '.join(allowed)}")
        return names

    return convert


_learner_names = _choices("learner", tuple(LEARNERS))
_modes = _choices("mode", ("wait", "fnw"))


def _one_mode(text: str | list[str]) -> tuple[str, ...]:
    modes = _modes(text)
    if len(modes) != 1:
        raise ValueError("the service trains in one mode: wait or fnw")
    return modes


def _positive_int(text: str | int) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def _positive_duration_ms(text: str | int) -> int:
    value = parse_duration_ms(text)
    if value < 1:
        raise ValueError(f"must be a positive duration, got {text!r}")
    return value


def _dataset_name(text: str) -> str:
    if text not in DATASETS:
        raise ValueError(f"unknown dataset {text!r}; available: {', '.join(DATASETS)}")
    return text


def _port(text: str | int) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"not a TCP port: {value}")
    return value


def _add_topic_options(opts: Options, parser: argparse.ArgumentParser) -> None:
    for topic in ("impressions", "clicks", "samples", "dlq"):
        opts.add(parser, f"--{topic}-topic", default=topic, help=f"name of the {topic} topic")


def _add_kafka_options(opts: Options, parser: argparse.ArgumentParser) -> None:
    from pipeline.kafka_clients import CLIENT_LIBRARIES, SASL_MECHANISMS, SECURITY_PROTOCOLS

    opts.add(parser, "--kafka-client", type=_one_of(CLIENT_LIBRARIES), default="kafka-python",
             help="Kafka client library: kafka-python, or confluent (librdkafka, much faster; "
                  "pip install 'streamctr[confluent]')")
    opts.add(parser, "--security-protocol", type=_one_of(SECURITY_PROTOCOLS),
             default="PLAINTEXT", help=f"one of {', '.join(SECURITY_PROTOCOLS)}")
    opts.add(parser, "--sasl-mechanism", type=_one_of(SASL_MECHANISMS), default=None,
             help=f"with SASL_*: one of {', '.join(SASL_MECHANISMS)}")
    opts.add(parser, "--sasl-username", default=None, help="with SASL_*: the user name")
    opts.add(parser, "--sasl-password", default=None, secret=True, help="with SASL_*")
    opts.add(parser, "--ssl-cafile", default=None,
             help="with SSL / SASL_SSL: CA certificates (PEM) to verify the brokers with")
    opts.add(parser, "--ssl-certfile", default=None,
             help="with SSL / SASL_SSL: this client's certificate (PEM), for mutual TLS")
    opts.add(parser, "--ssl-keyfile", default=None,
             help="with --ssl-certfile: its private key (PEM)")
    opts.add(parser, "--ssl-key-password", default=None, secret=True,
             help="the private key's password, if it has one")


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text
    return parse


def _kafka_config(args: argparse.Namespace):  # -> KafkaClientConfig (deferred import)
    from pipeline.kafka_clients import KafkaClientConfig, KafkaSecurity

    security = KafkaSecurity(
        args.security_protocol, sasl_mechanism=args.sasl_mechanism,
        sasl_username=args.sasl_username, sasl_password=args.sasl_password,
        ssl_cafile=args.ssl_cafile, ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile, ssl_key_password=args.ssl_key_password)
    return KafkaClientConfig(args.bootstrap, args.kafka_client, security)


def _add_joiner_options(opts: Options, parser: argparse.ArgumentParser) -> None:
    d = JoinerConfig()
    opts.add(parser, "--window", type=parse_duration_ms, default=d.window_ms,
             help="attribution window (e.g. 15m), in ms")
    opts.add(parser, "--allowed-lateness", type=parse_duration_ms, default=d.allowed_lateness_ms,
             help="how late (event time) an event may arrive and still be taken in order, ms")
    opts.add(parser, "--recent-length", type=_positive_int, default=d.recent_length,
             help="clicks in an impression's recent sequence")
    opts.add(parser, "--lifelong-top-k", type=_positive_int, default=d.lifelong_top_k,
             help="same-category clicks returned by the lifelong (SIM) search")
    opts.add(parser, "--lifelong-cap", type=_positive_int, default=d.lifelong_cap,
             help="clicks kept per user in the lifelong store")
    opts.add(parser, "--lifelong-ttl", type=parse_duration_ms, default=d.lifelong_ttl_ms,
             help="age after which a click leaves the lifelong store, ms")
    opts.add(parser, "--key-ttl", type=parse_duration_ms, default=None,
             help="event time a user, item or user x category may stay idle before its "
                  "state is evicted (default and minimum: the longer of --lifelong-ttl "
                  "and 24 count half-lives, when nothing of it is observable any more)")


def _joiner_config(args: argparse.Namespace, mode: str = "wait") -> JoinerConfig:
    return JoinerConfig(window_ms=args.window, allowed_lateness_ms=args.allowed_lateness,
                        mode=mode, recent_length=args.recent_length,  # type: ignore[arg-type]
                        lifelong_top_k=args.lifelong_top_k, lifelong_cap=args.lifelong_cap,
                        lifelong_ttl_ms=args.lifelong_ttl, key_ttl_ms=args.key_ttl)


def _topics(args: argparse.Namespace):  # -> Topics (import deferred: kafka-heavy modules)
    from pipeline.service import Topics

    return Topics(args.impressions_topic, args.clicks_topic, args.samples_topic, args.dlq_topic)


# --- commands ------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from replay.synthetic import generate, write_stream

    with Console(stderr=True).status(f"generating {args.events:,} events"):
        stream = generate(args.events, seed=args.seed)
        write_stream(stream, args.out)
    print(f"wrote {stream.impressions.height:,} impressions and {stream.clicks.height:,} clicks "
          f"to {args.out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from rich.console import Console

    from features.importers import import_dataset

    with Console(stderr=True).status(f"importing {args.dataset} from {args.src}"):
        summary = import_dataset(args.dataset, args.src, args.out, seed=args.seed,
                                 list_size=args.list_size, min_rating=args.min_rating)
    print("\n".join(summary.lines()))
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from pipeline.broker import run_foreground

    return run_foreground(host=args.host, port=args.port)


def cmd_produce(args: argparse.Namespace) -> int:
    from pipeline.produce import produce_folder

    summary = produce_folder(args.dir, _kafka_config(args), topics=_topics(args),
                             rate=args.rate)
    print(f"produced {summary.impressions:,} impressions and {summary.clicks:,} clicks in "
          f"{summary.seconds:.1f} s ({summary.skipped_invalid:,} invalid rows skipped)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.service import STOPPED_SHARED_TRAIN_GROUP, Service, ServiceConfig
    from replay.progress import progress

    kafka = _kafka_config(args)
    learners = args.learners
    if learners is None:  # a join worker trains nothing
        learners = () if args.role == "join" else ("ftrl",)
    config = ServiceConfig(
        bootstrap=kafka.bootstrap,
        kafka_client=kafka.library,
        security=kafka.security,
        group_instance_id=args.group_instance_id,
        role=args.role,
        learners=learners,
        learner_params=learner_params(args.config, LEARNERS),
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_interval_s=args.checkpoint_interval / 1000,
        checkpoint_keep=args.checkpoint_keep,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        max_events=args.max_events,
        group_id=args.group_id,
        topics=_topics(args),
        joiner=_joiner_config(args, args.delayed_feedback[0]),
        publish_samples=args.publish_samples,
        read_ahead=args.read_ahead,
    )
    with progress("serve", args.max_events, enabled=sys.stderr.isatty()) as ticker:
        service = Service(config, on_progress=ticker.tick)
        _stop_on_signals(service.request_stop)
        log.info("serving (role %s, learners %s) from %s; metrics on %s:%s", args.role,
                 ",".join(learners) or "none", args.bootstrap, args.metrics_host,
                 args.metrics_port)
        summary = service.run()
    samples = ("" if not summary.join else
               f"samples {summary.join['samples_positive']:,} positive / "
               f"{summary.join['samples_negative']:,} negative; ")
    print(f"stopped ({summary.stopped_by}) after {sum(summary.consumed.values()):,} records; "
          f"{samples}rejected {sum(summary.rejected.values()):,}")
    if args.checkpoint_dir is not None:
        newest = summary.checkpoint.path.name if summary.checkpoint else (
            f"ckpt-{summary.restored:09d}" if summary.restored else "none")
        print(f"state: {summary.records_total:,} records, in checkpoint {newest}")
    if summary.stopped_by == STOPPED_SHARED_TRAIN_GROUP:
        print(f"error: another train worker is in group {args.group_id}: run one per group",
              file=sys.stderr)
        return 1
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    import json

    from pipeline.checkpoint import describe_folder, render_listing

    listing = describe_folder(args.dir)  # CheckpointError (exit 2) when there is none
    print(json.dumps(listing, indent=2) if args.json else render_listing(listing))
    if listing["newest_valid"] is None:
        print(f"streamctr checkpoint: error: {args.dir}: no valid checkpoint", file=sys.stderr)
        return 1
    return 0


def _checkpoint_action(text: str) -> str:
    if text != "show":
        raise ValueError(f"unknown action {text!r}; available: show")
    return text


def _replay_source(args: argparse.Namespace) -> Path | ReplayInput:
    """DIR, or the topic range of ``--bootstrap``: exactly one of them."""
    if (args.dir is None) == (args.bootstrap is None):
        given = "both" if args.dir is not None else "neither"
        raise ValueError(f"give a replay folder DIR or --bootstrap HOST:PORT, not {given}")
    if args.dir is not None:
        if args.from_time is not None or args.to_time is not None:
            raise ValueError("--from-time/--to-time select a topic range: they need --bootstrap "
                             "instead of DIR")
        return args.dir
    from replay.kafka_input import BrokerUnreachableError, read_topic_range

    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    if not args.verbose:  # the client logs every failed connect; the error below says it once
        kafka_log.setLevel(logging.CRITICAL)
    try:
        return read_topic_range(args.bootstrap, args.from_time, args.to_time,
                                impressions_topic=args.impressions_topic,
                                clicks_topic=args.clicks_topic, window_ms=args.window)
    except BrokerUnreachableError as exc:  # a failure while running, not bad input: status 1
        raise BrokerError(str(exc)) from None
    finally:
        kafka_log.setLevel(level)


def cmd_replay(args: argparse.Namespace) -> int:
    from rich.console import Console

    from replay.report import learner_table
    from replay.run import run_replay

    source = _replay_source(args)
    result = run_replay(source, args.learners, args.report, joiner_config=_joiner_config(args),
                        learner_params=learner_params(args.config, LEARNERS),
                        modes=args.delayed_feedback, warmup_ms=args.warmup,
                        time_bucket_ms=args.time_bucket)
    Console().print(learner_table(result.learners, "progressive validation (replay)"))
    print(f"report: {args.report}/report.md")
    return 0


def cmd_interleave(args: argparse.Namespace) -> int:
    from replay.interleave_report import InterleaveConfig, run_interleave

    config = InterleaveConfig(method=args.method, click_model=args.click_model,
                              ab_metric=args.ab_metric, k=args.k, repeats=args.repeats,
                              min_pool=args.min_pool, seed=args.seed)
    doc = run_interleave(args.dir, args.models, args.report, config,
                         joiner_config=_joiner_config(args),
                         learner_params=learner_params(args.config, LEARNERS))
    def users(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.0f}"

    for pair in doc["pairs"]:
        need = pair.get("users_needed") or {}
        ratio = need.get("ratio")
        print(f"{pair['a']} vs {pair['b']}: better {pair['better'] or 'too close to call'}; "
              f"users for 95%: interleaving {users(need.get('interleaving'))}, "
              f"A/B {users(need.get('ab'))}" + (f" (A/B needs {ratio:.1f}x)" if ratio else ""))
    print(f"report: {args.report}/report.md")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    return run_demo(out=args.out, events=args.events, seed=args.seed, learners=args.learners,
                    window_ms=args.window)


# --- wiring ------------------------------------------------------------------------------------


def _build() -> tuple[argparse.ArgumentParser, dict[str, Options]]:
    from pipeline.service import ROLES

    parser = _Parser(prog="streamctr", description="Streaming online learning for CTR prediction.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    all_options: dict[str, Options] = {}

    def command(name: str, help: str, run: Callable[[argparse.Namespace], int]):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--config", metavar="FILE", help="TOML file of option values")
        p.set_defaults(run=run)
        opts = all_options[name] = Options(name)
        return p, opts

    learners_help = f"comma-separated learners, of: {', '.join(LEARNERS)}"
    all_learners = ",".join(LEARNERS)

    p, o = command("demo", "embedded broker → synthetic stream → service → comparison table",
                   cmd_demo)
    o.add(p, "--events", type=_positive_int, default=200_000, help="events to generate")
    o.add(p, "--out", type=Path, default=Path("demo-report"), help="report folder")
    o.add(p, "--seed", type=int, default=0, help="generator seed")
    o.add(p, "--learners", type=_learner_names, default=_learner_names(all_learners),
          help=learners_help)
    o.add(p, "--window", type=parse_duration_ms, default=15 * 60_000,
          help="attribution window (e.g. 15m) in ms")

    p, o = command("broker", "run the embedded Kafka-protocol broker in the foreground",
                   cmd_broker)
    o.add(p, "--host", default="127.0.0.1", help="address to listen on")
    o.add(p, "--port", type=_port, default=0, help="port (0: a free one)")

    p, o = command("generate", "synthetic stream with known ground truth", cmd_generate)
    o.add(p, "--events", type=_positive_int, help="number of events (impressions + clicks)")
    o.add(p, "--out", type=Path, help="output folder")
    o.add(p, "--seed", type=int, default=0, help="random seed")

    p, o = command("import", "convert a public dataset (mind, taobao, yandex, movielens) "
                             "into a replay input folder", cmd_import)
    o.add(p, "dataset", type=_dataset_name, positional=True, metavar="DATASET",
          help=f"source format, one of: {', '.join(DATASETS)}")
    o.add(p, "src", type=Path, positional=True, metavar="SRC",
          help="the dataset's file or folder (see docs/importers.md)")
    o.add(p, "--out", type=Path, help="output folder (replay input)")
    o.add(p, "--seed", type=int, default=0, help="random seed (taobao's sampled negatives)")
    o.add(p, "--list-size", type=_positive_int, default=10,
          help="taobao: items per constructed request (clicks + sampled negatives)")
    o.add(p, "--min-rating", type=float, default=4.0,
          help="movielens: a rating >= this is a click")

    p, o = command("produce", "publish a replay folder to the topics in event-time order",
                   cmd_produce)
    o.add(p, "dir", type=Path, positional=True, help="replay input folder", metavar="DIR")
    o.add(p, "--bootstrap", help="Kafka bootstrap HOST:PORT")
    o.add(p, "--rate", type=float, default=None, help="pace to this many events/s")
    _add_topic_options(o, p)
    _add_kafka_options(o, p)

    p, o = command("serve", "the long-running consumer service", cmd_serve)
    o.add(p, "--bootstrap", help="Kafka bootstrap HOST:PORT")
    o.add(p, "--role", type=_one_of(ROLES), default="all",
          help="all: join and train in one process; join: join impressions and clicks, "
               "publish labelled samples (workers in one group split the partitions); "
               "train: learn from the samples topic (one worker)")
    o.add(p, "--learners", type=_learner_names, default=None,
          help=f"{learners_help} (default: ftrl; none with --role join)")
    o.add(p, "--checkpoint-dir", type=Path, default=None,
          help="checkpoints folder (state + offsets; restored at start)")
    o.add(p, "--checkpoint-interval", type=_positive_duration_ms, default=60_000,
          help="time between checkpoints (e.g. 30s), in ms; one is also written on stop "
               "and when partitions are revoked")
    o.add(p, "--checkpoint-keep", type=_positive_int, default=3,
          help="checkpoints kept in --checkpoint-dir")
    o.add(p, "--metrics-port", type=_port, default=9100, help="Prometheus /metrics port")
    o.add(p, "--metrics-host", default="0.0.0.0",
          help="address /metrics, /healthz and /readyz listen on (127.0.0.1: this host only)")
    o.add(p, "--max-events", type=_positive_int, default=None,
          help="stop once the state has taken in this many records (counted over restarts "
               "from --checkpoint-dir), closing every window")
    _add_joiner_options(o, p)
    o.add(p, "--delayed-feedback", type=_one_mode, default=("wait",),
          help="training mode: wait (label at window end) or fnw (fake negative weighting)")
    o.add(p, "--group-id", default="streamctr", help="Kafka consumer group")
    o.add(p, "--group-instance-id", default=None,
          help="static group membership (e.g. the pod name): a restart within the session "
               "timeout keeps its partitions, without a rebalance")
    o.add(p, "--publish-samples", type=parse_bool, default=False,
          help="with --role all: also publish labelled samples to the samples topic")
    o.add(p, "--read-ahead", type=parse_bool, default=True,
          help="poll Kafka in a child process, a few batches ahead of processing, so "
               "reading overlaps the engine (false: on the service's thread)")
    _add_topic_options(o, p)
    _add_kafka_options(o, p)

    p, o = command("checkpoint", "inspect a checkpoint folder: checkpoint show DIR [--json]",
                   cmd_checkpoint)
    o.add(p, "action", type=_checkpoint_action, positional=True, metavar="ACTION",
          help="show: each checkpoint's id, time, records, offsets, per-learner samples "
               "learned and weight fingerprints, verified against its checksums")
    o.add(p, "dir", type=Path, positional=True, metavar="DIR",
          help="the folder given to serve --checkpoint-dir")
    o.add(p, "--json", type=parse_bool, default=False, help="print JSON instead of text")

    p, o = command("replay", "leak-free offline replay of a folder or of a topic range",
                   cmd_replay)
    o.add(p, "dir", type=Path, positional=True, default=None, metavar="DIR",
          help="replay input folder (or give --bootstrap to replay a topic range)")
    o.add(p, "--bootstrap", default=None,
          help="Kafka bootstrap HOST:PORT: replay a time range of its topics instead of DIR")
    o.add(p, "--from-time", type=parse_time_ms, default=None,
          help="with --bootstrap: impressions from this time on, ISO-8601 with a zone "
               "(2026-11-30T12:00:00Z) or epoch ms (default: the topics' beginning)")
    o.add(p, "--to-time", type=parse_time_ms, default=None,
          help="with --bootstrap: impressions before this time (exclusive; clicks up to one "
               "window later), ISO-8601 or epoch ms (default: now)")
    for topic in ("impressions", "clicks"):
        o.add(p, f"--{topic}-topic", default=topic, help=f"with --bootstrap: the {topic} topic")
    o.add(p, "--learners", type=_learner_names, default=("ftrl",), help=learners_help)
    o.add(p, "--report", type=Path, help="report folder")
    _add_joiner_options(o, p)
    o.add(p, "--delayed-feedback", type=_modes, default=("wait", "fnw"),
          help="training modes to compare, of: wait (label at window end), fnw (fake "
               "negative weighting); the first one is the report's main table")
    o.add(p, "--warmup", type=parse_duration_ms, default=None,
          help="leave impressions of the stream's first DURATION out of the metrics "
               "(default: one window; 0 keeps all)")
    o.add(p, "--time-bucket", type=_positive_duration_ms, default=None,
          help="bucket width of the metrics over time, e.g. 1h (default: a round width "
               "giving at most 48 buckets)")

    from replay.click_models import CLICK_MODELS
    from replay.interleaving import METHODS
    from replay.simulation import AB_METRICS

    p, o = command("interleave", "rankers of a replay folder compared by interleaving and by "
                                 "simulated A/B tests", cmd_interleave)
    o.add(p, "dir", type=Path, positional=True, metavar="DIR", help="replay input folder")
    o.add(p, "--models", type=parse_names,
          help="comma-separated rankers, two or more: learners (scores from a replay of "
               f"DIR; of {', '.join(LEARNERS)}), LEARNER@F (frozen after the first fraction F "
               "of the events, e.g. ftrl@0.5), oracle (the true attractiveness), "
               "oracle+NOISE (plus Gaussian noise on the logit, e.g. oracle+1.5), logged")
    o.add(p, "--method", type=_one_of(tuple(METHODS)), default="team-draft",
          help=f"interleaving method, of: {', '.join(METHODS)}")
    o.add(p, "--click-model", type=_one_of(tuple(CLICK_MODELS)), default="pbm",
          help="simulated users, fitted to DIR's log, of: " + ", ".join(CLICK_MODELS))
    o.add(p, "--ab-metric", type=_one_of(AB_METRICS), default="clicks",
          help="the A/B test's metric per request: clicks, or reciprocal-rank (of the first "
               "click; clicks per request do not depend on the order under cascade users)")
    o.add(p, "--report", type=Path, help="report folder")
    o.add(p, "--k", type=_positive_int, default=10, help="positions shown")
    o.add(p, "--repeats", type=_positive_int, default=None,
          help="times each request is shown (default: enough for --min-pool)")
    o.add(p, "--min-pool", type=_positive_int, default=100_000,
          help="fewest simulated requests per experiment")
    o.add(p, "--seed", type=int, default=0, help="random seed")
    _add_joiner_options(o, p)
    return parser, all_options


def main(argv: Sequence[str] | None = None) -> int:
    parser, options = _build()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("kafka").setLevel(logging.ERROR)
    try:
        options[args.command].resolve(args)
        return args.run(args)
    except _BAD_INPUT as exc:
        print(f"streamctr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (KafkaError, BrokerError) as exc:
        print(f"streamctr {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"streamctr {args.command}: interrupted", file=sys.stderr)
        return 130


def _stop_on_signals(stop: Callable[[str], None]) -> None:
    def handler(signum: int, _frame: object) -> None:
        stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


if __name__ == "__main__":
    raise SystemExit(main())
