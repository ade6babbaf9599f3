"""Command-line parsing, logging set-up and exit codes; each command calls one pipeline."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from bot import __version__
from bot.errors import BotError, ConfigError
from bot.models import Outcome, Status
from bot.text import one_line

if TYPE_CHECKING:
    from bot.app import App
    from bot.jobs.send import Preview

log = logging.getLogger("bot")


class UsageError(Exception):
    """A command line argparse refused: one line for stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with where to find help), not the usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"openrouter-usage: error: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="openrouter-usage",
        description="Watch an OpenRouter account's spending: reports, digests and alerts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, argparse.SUPPRESS)
    parser.set_defaults(config=None, verbose=False, quiet=False)
    # the global options are accepted after the command too (`report -v`)
    common = _Parser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    rep = add("report", "spend by model, provider, date and key")
    when = rep.add_mutually_exclusive_group()
    when.add_argument("--date", metavar="D", help="one UTC day, YYYY-MM-DD")
    when.add_argument("--days", metavar="N", type=int, help="the last N completed UTC days")
    when.add_argument("--from", dest="start", metavar="D", help="first UTC day of a range")
    rep.add_argument("--to", dest="end", metavar="D", help="last UTC day of a range")
    fmt = rep.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object")
    fmt.add_argument("--csv", action="store_true", help="one CSV line per activity row")
    rep.add_argument("--no-credits", action="store_true", help="skip the credits balance")
    rep.add_argument("--by-key", action="store_true", help="also break spend down by API key")
    rep.add_argument("--by-workspace", action="store_true",
                     help="also break spend down by workspace (with --csv: one line each)")

    send = add("send", "build and deliver the daily digest or weekly report")
    send.add_argument("job", choices=["daily", "weekly"])
    send.add_argument("--date", metavar="D", help="the (last) UTC day to report on")
    send.add_argument("--to", metavar="DEST", action="extend", nargs="+",
                      help="destinations instead of the configured ones")
    send.add_argument("--dry-run", action="store_true", help="print what would be sent")
    send.add_argument("--force", action="store_true", help="send even if already sent")

    alerts = add("alerts", "evaluate alert rules once and deliver what changed")
    alerts.add_argument("--dry-run", action="store_true", help="show, change no state")

    sync = add("sync", "store credits, activity and keys in the local history (and, the first "
                       "time, a year of history from the analytics API)")
    sync.add_argument("--backfill", metavar="DAYS", help="fill history this far back again "
                      "from the analytics API, e.g. 90d (at most 365d)")
    migrate = add("migrate", "copy the SQLite history into PostgreSQL (run it again at will)")
    migrate.add_argument("--to", metavar="URL", help="postgresql://user@host/database "
                         "(default: storage.url)")
    migrate.add_argument("--from", dest="source", metavar="PATH",
                         help="the SQLite history file (default: storage.path)")
    add("run", "the daemon: scheduled sync, digests, reports and alerts")
    add("check", "validate config and test each connection")
    demo = add("demo", "report, digest and weekly e-mail from bundled sample data")
    demo.add_argument("--out", metavar="DIR", default="out", help="where to write the e-mail HTML")
    return parser


def _global_options(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument("--config", metavar="PATH", default=default, help="YAML config "
                        "(default: $OPENROUTER_USAGE_CONFIG, else ./config.yaml if present)")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="debug logging, tracebacks")
    noise.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="only errors")


class _Redactor(logging.Filter):
    """Takes this run's secrets (and anything shaped like one) out of every log record: the
    message, and the traceback and stack a record carries (-v)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []

    def redact(self, text: str) -> str:
        from bot.text import redact

        return redact(text, self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = self.redact(text)
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


REDACTOR = _Redactor()


def setup_logging(verbose: bool, quiet: bool, daemon: bool = False) -> None:
    """Debug with -v, errors only with -q; otherwise warnings (the daemon: one line per job)."""
    level = (
        logging.DEBUG if verbose else logging.ERROR if quiet
        else logging.INFO if daemon else logging.WARNING
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(REDACTOR)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("bot").setLevel(level)
    if verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Hooks:
    """What a caller of :func:`main` may put in place of the real clock and waits (tests)."""

    now: Callable[[], dt.datetime] | None = None
    sleep: Callable[[float], None] | None = None


def make_app(args: argparse.Namespace, *, need_config: bool, hooks: Hooks = Hooks()) -> App:
    from bot.app import App
    from bot.config import find_config_path, load_config, load_env

    env = load_env()
    REDACTOR.secrets = secrets_in(env)  # known before the config is read, should it fail
    path = find_config_path(args.config, env)
    if path is None and need_config:
        raise ConfigError(
            "no config file: pass --config PATH, set OPENROUTER_USAGE_CONFIG, or create "
            "./config.yaml (see config.example.yaml)"
        )
    app = App(config=load_config(path, env, strict=need_config), env=env)
    if hooks.now is not None:
        app.now = hooks.now
    if hooks.sleep is not None:
        app.sleep = hooks.sleep
    REDACTOR.secrets = [*secrets_in(env), *app.secrets()]
    return app


_SECRET_NAME = re.compile(r"KEY|TOKEN|PASSWORD|PASSWD|SECRET|WEBHOOK", re.IGNORECASE)


def secrets_in(env: dict[str, str]) -> list[str]:
    """The values of variables whose names say they hold a secret (`*_KEY`, `*_TOKEN`, ...):
    redacted from output even before, or without, the config naming them."""
    return [v for k, v in env.items() if _SECRET_NAME.search(k) and v.strip()]


def progress_bar(label: str, quiet: bool) -> Callable[[int, int], None] | None:
    """A one-line progress bar on stderr, only when stderr is a terminal."""
    if quiet or not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
        sys.stderr.flush()

    return show


def cmd_report(args: argparse.Namespace, hooks: Hooks) -> int:
    from bot.jobs.report import gather_report, resolve_period
    from bot.render.text import format_text, missing_note, to_json, write_csv, write_groups_csv

    if args.end and not args.start:
        raise ConfigError("--to needs --from")
    app = make_app(args, need_config=False, hooks=hooks)
    now = app.now()
    period = resolve_period(now, date=args.date, days=args.days, start=args.start, end=args.end)
    with app.client() as client:
        report = gather_report(
            client,
            app.existing_store(),
            period,
            now=now,
            with_credits=not args.no_credits,
            with_keys=args.by_key,
            by_workspace=args.by_workspace,
            progress=progress_bar("Fetching per-key activity", args.quiet),
        )
    if args.json:
        sys.stdout.write(to_json(report) + "\n")
    elif args.csv and report.by_workspace is not None:
        write_groups_csv(report.by_workspace, "workspace", sys.stdout)
    elif args.csv:
        write_csv(report.rows, sys.stdout)
    else:
        sys.stdout.write(format_text(report))
    if report.missing_days and (args.json or args.csv) and not args.quiet:
        print(missing_note(report), file=sys.stderr)
    return 0


def cmd_sync(args: argparse.Namespace, hooks: Hooks) -> int:
    from bot.config import parse_backfill
    from bot.jobs.sync import run_sync

    refill = parse_backfill(args.backfill, "--backfill") if args.backfill else None
    app = make_app(args, need_config=False, hooks=hooks)
    with app.client() as client:
        stats = run_sync(
            client,
            app.store(),
            now=app.now(),
            backfill=app.config.history.backfill,
            refill=refill,
            progress=progress_bar("Fetching per-key activity", args.quiet),
            history_progress=progress_bar("Filling history (days)", args.quiet),
        )
    if not args.quiet:
        print(stats.summary())
    return 0


def cmd_migrate(args: argparse.Namespace, hooks: Hooks) -> int:
    from urllib.parse import unquote

    from bot.jobs.migrate import run_migrate
    from bot.store.backend import url_password

    app = make_app(args, need_config=False, hooks=hooks)
    password = url_password(args.to) if args.to else None
    if password:
        REDACTOR.secrets = [*REDACTOR.secrets, password, unquote(password)]
    result = run_migrate(app, to_url=args.to, from_path=args.source,
                         progress=progress_bar("Copying rows", args.quiet))
    if not args.quiet:
        for table in result.tables:
            print(f"{table.name:<20} {table.source_rows:>10,} rows  {table.copied:>10,} copied "
                  f"now  {table.target_rows:>10,} in the target")
        print(f"migrated {result.source} to {result.target}: all {result.rows:,} rows are "
              f"there ({result.copied:,} copied now)")
    return 0


def cmd_demo(args: argparse.Namespace, hooks: Hooks) -> int:
    import json

    from bot.app import utcnow
    from bot.jobs.demo import run_demo
    from bot.render.messages import blocks_to_text
    from bot.render.text import format_text

    demo = run_demo((hooks.now or utcnow)())
    out = sys.stdout
    out.write("=== openrouter-usage report --by-key (sample org, last 30 UTC days) ===\n")
    out.write(format_text(demo.report))
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    slack, mail = demo.daily_slack, demo.weekly_email
    slack_path = folder / "daily-slack.json"
    slack_path.write_text(
        json.dumps({"text": slack.text, "blocks": slack.blocks}, indent=2, ensure_ascii=False)
    )
    out.write(f"\n=== Daily Slack digest for {demo.day} (UTC), as it would be posted ===\n")
    out.write(blocks_to_text(slack.blocks))
    html_path = folder / "weekly-email.html"
    html_path.write_text(demo.browser_html(), encoding="utf-8")
    for name, _mime, data in mail.attachments:
        (folder / name).write_bytes(data)
    out.write(f"\n=== Weekly e-mail report ===\nSubject: {mail.subject}\n")
    out.write(f"HTML written to {html_path.resolve()} (open it in a browser)\n")
    out.write(f"Attachments written to {folder.resolve()}/: "
              f"{', '.join(n for n, _, _ in mail.attachments)}\n")
    out.write(f"Slack Block Kit JSON written to {slack_path.resolve()}\n")
    return 0


def print_preview(preview: Preview, out_dir: Path = Path("out")) -> None:
    """Exactly what would be sent, on stdout; e-mail HTML to a file whose path is printed."""
    import json

    from bot.models import EventMessage, MailMessage

    out = sys.stdout
    dest, msg = preview.destination, preview.message
    out.write(f"--- {preview.label} -> {dest} (dry run, nothing sent) ---\n")
    if isinstance(msg, EventMessage):
        out.write(json.dumps({"title": msg.title, "body": msg.body}, indent=2,
                             ensure_ascii=False) + "\n")
        return
    if not isinstance(msg, MailMessage):
        out.write(json.dumps({"text": msg.text, "blocks": msg.blocks}, indent=2,
                             ensure_ascii=False) + "\n")
        if msg.chart_png:
            out.write(f"(plus a {len(msg.chart_png):,}-byte chart PNG uploaded in the thread)\n")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = dest.target.replace("@", "_at_").replace("/", "_")
    html_path = out_dir / f"{preview.stem}-{safe}.html"
    html_path.write_text(msg.html, encoding="utf-8")
    out.write(f"Subject: {msg.subject}\nTo: {dest.target}\n")
    for name, mime, data in msg.attachments:
        out.write(f"Attachment: {name} ({mime}, {len(data):,} bytes)\n")
    for cid, png in msg.inline_images.items():
        out.write(f"Inline image: cid:{cid} ({len(png):,} bytes)\n")
    out.write(f"HTML body written to {html_path}\n\n{msg.text.rstrip()}\n")


def say(line: str) -> None:
    """One status line on stdout (shown as soon as it is known), with what came from outside
    (names, servers' error texts) on one line, without control characters or secrets."""
    from bot.text import strip_controls

    text = strip_controls(REDACTOR.redact(line))
    print(text.replace("\n", " ").replace("\t", " "), flush=True)


def error_line(detail: str, kind: str = "error") -> None:
    """One line on stderr: `openrouter-usage: error: ...`, secrets redacted in every form."""
    print(one_line(f"openrouter-usage: {kind}: {REDACTOR.redact(detail)}", 1000),
          file=sys.stderr)


def exit_code(ok: bool, outcomes: Iterable[Outcome]) -> int:
    """0 when all went well; 2 when a delivery was stopped by the configuration (said in one
    line on stderr; it stays pending until that is fixed); 1 for any other failure."""
    stopped = [o for o in outcomes if o.status is Status.CONFIG_ERROR]
    if stopped:
        error_line(stopped[0].detail)
        return 2
    return 0 if ok else 1


def cmd_send(args: argparse.Namespace, hooks: Hooks) -> int:
    from bot.config import parse_destination
    from bot.jobs.report import parse_day
    from bot.jobs.send import SendOptions, run_send

    options = SendOptions(
        job=args.job,
        day=parse_day(args.date, "--date") if args.date else None,
        to=tuple(parse_destination(d, f"--to {d}") for d in args.to or ()),
        dry_run=args.dry_run,
        force=args.force,
    )
    result = run_send(make_app(args, need_config=True, hooks=hooks), options)
    for preview in result.previews:
        print_preview(preview)
    for o in result.outcomes:
        say(f"{result.job} {o.period or result.period}: {o.line()}")
    return exit_code(result.ok, result.outcomes)


def cmd_alerts(args: argparse.Namespace, hooks: Hooks) -> int:
    from bot.jobs.alerts import run_alerts
    from bot.render.messages import Renderer

    app = make_app(args, need_config=True, hooks=hooks)
    result = run_alerts(app, dry_run=args.dry_run)
    for preview in result.previews:
        print_preview(preview)
    for o in result.retried:  # alerts earlier runs could not deliver
        say(f"{o.job} {o.period}: {o.line()}")
    if not result.events:
        print("alerts: no alert started, repeated or resolved" if result.retried
              else "alerts: nothing changed")
    renderer = Renderer(app.config.templates_dir)
    for event, outcomes in result.events:
        sent = ", ".join(o.line() for o in outcomes)
        words = renderer.alert_words(event.obs)
        say(f"{event.action.upper():8} {event.obs.rule.id} {words.subject}: "
            f"{words.value} (threshold {words.threshold}) -> {sent}")
    from bot.render.fmt import as_of

    for quiet in result.silenced:  # acknowledged or snoozed from Slack
        sil = quiet.silence
        if quiet.snoozed and sil.snoozed_until is not None:
            say(f"SNOOZED  {quiet.rule_id} {quiet.name}: until {as_of(sil.snoozed_until)} "
                f"(by {sil.snoozed_by}); it still resolves")
        if quiet.acknowledged and sil.acked_at is not None:
            say(f"ACKED    {quiet.rule_id} {quiet.name}: by {sil.acked_by} at "
                f"{as_of(sil.acked_at)}; no repeats until it resolves")
    outcomes = [o for _, outs in result.events for o in outs]
    return exit_code(result.ok, outcomes + result.retried)


def cmd_run(args: argparse.Namespace, hooks: Hooks) -> int:
    from bot.scheduler import run_daemon

    return run_daemon(make_app(args, need_config=True, hooks=hooks))


def cmd_check(args: argparse.Namespace, hooks: Hooks) -> int:
    from bot.jobs.check import Verdict, checks

    app = make_app(args, need_config=True, hooks=hooks)
    cfg = app.config
    print(f"Config: {cfg.source or 'defaults'} is valid "
          f"({len(cfg.alerts.rules)} alert rules, timezone {cfg.timezone})")
    failed = 0
    for check in checks(app):
        result = check.run()  # one at a time, so each line shows as soon as it is known
        failed += result.verdict is Verdict.FAIL
        say(f"{result.verdict:<6}{result.name}: {result.detail}")
    if failed:
        print(f"{failed} check(s) failed", file=sys.stderr)
        return 1
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Hooks], int]] = {
    "report": cmd_report,
    "sync": cmd_sync,
    "demo": cmd_demo,
    "send": cmd_send,
    "alerts": cmd_alerts,
    "run": cmd_run,
    "migrate": cmd_migrate,
    "check": cmd_check,
}


def main(
    argv: Sequence[str] | None = None,
    *,
    now: Callable[[], dt.datetime] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> int:
    """Run one command; ``now`` and ``sleep`` replace the wall clock and real waits (tests)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(one_line(str(exc)), file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse: --help and --version exit 0
        return int(exc.code or 0)
    setup_logging(args.verbose, args.quiet, daemon=args.command == "run")
    try:
        return COMMANDS[args.command](args, Hooks(now=now, sleep=sleep))
    except BotError as exc:
        if args.verbose:
            log.debug("traceback", exc_info=True)
        error_line(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print("openrouter-usage: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still one line unless -v
        if args.verbose:
            log.exception("unexpected error")
        error_line(f"{type(exc).__name__}: {exc} (run with -v for details)",
                   kind="internal error")
        return 1
