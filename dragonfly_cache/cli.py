"""The command line: ``dragonfly-cache`` (or ``python -m dragonfly_cache``).

Commands::

    dragonfly-cache [--config FILE] ping                 # PONG 127.0.0.1:6379 redis 7.0.15
    dragonfly-cache [--config FILE] stats                # health() as JSON
    dragonfly-cache [--config FILE] invalidate PATTERN [--yes]
    dragonfly-cache serve [--bind HOST:PORT] [--workers N]

The configuration comes from ``--config FILE`` (YAML, :meth:`CacheConfig.from_yaml`) or else
the environment (:meth:`CacheConfig.from_env`). Exit codes: 0 success; 1 the server is
unhealthy or unreachable, or the user declined; 2 a usage or configuration error, or a missing
extra. Failures are one line on stderr, never a traceback, and never contain the password.

``ping`` and ``stats`` run with cross-process coherence off: they make one probe and exit,
so an invalidation listener would only add a thread and a connection to each run.
``invalidate`` keeps the configured setting (on by default): with coherence off it would
publish no invalidation, and the apps' L1 would serve the removed keys up to ``l1.ttl``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from ._console import PROG, Console
from ._extras import require
from ._version import __version__
from .config import CacheConfig
from .exceptions import CacheUnavailableError, ConfigError, MissingExtraError
from .tiered import TieredCache

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1  # unhealthy / unreachable server, or the user declined
EXIT_USAGE = 2  # bad arguments or configuration, or a missing extra (argparse uses 2 as well)

DEFAULT_PORT = 8000
DEFAULT_WORKERS = 2
GUNICORN_CONFIG = "python:dragonfly_cache._gunicorn"
DEMO_APP = "dragonfly_cache.demo:create_app()"
SERVE_NEEDS = ("gunicorn", "flask", "prometheus_flask_exporter")  # the server extra

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A command-line value (or an environment default for one) is invalid; exit code 2."""


# -- commands -----------------------------------------------------------------------------


def _cmd_ping(args: argparse.Namespace) -> int:
    """Probe the server; one line either way."""
    config = _one_shot(_load_config(args))
    console = Console(config)
    address = config.dragonfly.addresses[0]
    with TieredCache(config) as cache:
        health = cache.health()
    server = health["dragonfly"]
    nodes, sentinel = server.get("nodes"), server.get("sentinel")
    where = f" (cluster of {len(nodes)} primaries)" if nodes is not None else ""
    if nodes is not None:  # a cluster: name it by its seeds, and count its primaries
        address = ",".join(config.dragonfly.addresses)
    elif sentinel is not None:  # the primary the sentinels name now
        address = sentinel.get("primary") or f"no primary of {sentinel['service']!r}"
        where = f" (primary of Sentinel service {sentinel['service']!r})"
    if health["status"] == "healthy":
        console.out(f"PONG {address} {server['server']} {server['version']}{where}")
        return EXIT_OK
    # The L2 message starts "PING on <address> failed: "; the line already names both.
    reason = str(server.get("error", "no answer")).removeprefix(f"PING on {address} failed: ")
    console.error(f"{address} {'degraded' if server.get('connected') else 'unreachable'}: "
                  f"{reason}")
    return EXIT_FAILURE


def _cmd_stats(args: argparse.Namespace) -> int:
    """Print ``health()`` as JSON; exit 1 when unhealthy."""
    config = _one_shot(_load_config(args))
    console = Console(config)
    with TieredCache(config) as cache:
        health = cache.health()
    console.out(json.dumps(health, indent=2, default=str))
    return EXIT_OK if health["status"] == "healthy" else EXIT_FAILURE


def _cmd_invalidate(args: argparse.Namespace) -> int:
    """Remove the keys matching a glob; one with no literal prefix (it may match every key)
    needs a yes on the terminal, or ``--yes``. Not :func:`_one_shot`: the removal must be
    announced to the running caches' L1."""
    config = _load_config(args)
    console = Console(config)
    pattern: str = args.pattern
    if pattern[0] in "*?[" and not args.yes:  # no literal prefix ("\\*" is literal)
        where = (f"prefix {config.key_prefix!r} on {config.dragonfly.addresses[0]} "
                 f"db {config.dragonfly.db}")
        question = (f"Remove every key under {where}? [y/N] " if set(pattern) == {"*"} else
                    f"Remove the keys matching {pattern!r} under {where} (no literal "
                    f"prefix: it may match every key)? [y/N] ")
        if sys.stdin is None or not sys.stdin.isatty():
            console.error(f"refusing to remove the keys matching {pattern!r} (no literal "
                          "prefix: it may match every key) without a terminal to ask; "
                          "pass --yes")
            return EXIT_FAILURE
        if not _confirm(question):
            console.error("aborted")
            return EXIT_FAILURE
    with TieredCache(config) as cache:
        try:
            removed = cache.invalidate(pattern)
        except CacheUnavailableError as exc:
            console.error(str(exc))
            return EXIT_FAILURE
    console.out(f"removed {removed} key{'' if removed == 1 else 's'}")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    """Replace this process with gunicorn running the demo app."""
    if args.config is not None:
        raise UsageError("serve reads its configuration from the environment "
                         "(DRAGONFLY_*, CACHE_*); --config is not supported here")
    for module in SERVE_NEEDS:  # here, in one line, rather than in gunicorn's workers
        require(module, "server", "serve")
    # Fail here, in one line, rather than in every gunicorn worker with a traceback.
    CacheConfig.from_env()
    bind = args.bind if args.bind is not None else _default_bind(os.environ)
    workers = args.workers if args.workers is not None else _default_workers(os.environ)
    argv = [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG,
            "--bind", bind, "--workers", str(workers), DEMO_APP]
    # exec replaces the process without running Python's shutdown: flush what was written.
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(sys.executable, argv)  # noqa: S606 - our own interpreter, fixed argv
    except OSError as exc:
        Console().error(f"cannot start gunicorn: {exc}")
        return EXIT_FAILURE


# -- helpers ------------------------------------------------------------------------------


def _load_config(args: argparse.Namespace) -> CacheConfig:
    """The config from ``--config FILE`` if given, else from the environment.

    Raises:
        ConfigError: the file or a variable holds an invalid value.
        MissingExtraError: ``--config`` without PyYAML (the ``yaml`` extra).
    """
    if args.config is not None:
        require("yaml", "yaml", "--config")  # a line that names the option, not from_yaml
        return CacheConfig.from_yaml(args.config)
    return CacheConfig.from_env()


def _one_shot(config: CacheConfig) -> CacheConfig:
    """The config with coherence off: a one-shot command starts no listener thread."""
    return dataclasses.replace(config, l1=dataclasses.replace(config.l1, invalidation="off"))


def _confirm(prompt: str) -> bool:
    """Ask on stderr (stdout stays for results) and read one line of stdin; EOF is "no"."""
    print(prompt, end="", file=sys.stderr, flush=True)
    stdin: TextIO | None = sys.stdin
    answer = stdin.readline() if stdin is not None else ""
    if not answer:  # EOF leaves the prompt's line open (a terminal echoes the newline)
        print(file=sys.stderr)
    return answer.strip().lower() in {"y", "yes"}


def _whole_number(text: str) -> int | None:
    """``text`` as a non-negative int if it is ASCII digits (``int()`` takes more), else None."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _default_bind(environ: Mapping[str, str]) -> str:
    """The listen address when ``--bind`` is not given.

    ``$BIND`` first, as :mod:`dragonfly_cache._gunicorn` reads it (the ``--bind`` passed to
    gunicorn would otherwise override it silently), else ``127.0.0.1:$PORT``, else port 8000.

    Raises:
        UsageError: ``PORT`` is not a port number.
    """
    bind = environ.get("BIND", "").strip()
    if bind:
        return bind
    text = environ.get("PORT", "").strip() or str(DEFAULT_PORT)
    port = _whole_number(text)
    if port is None or not 0 < port < 65536:
        raise UsageError(f"PORT={text!r}: expected a port number (1-65535)")
    return f"127.0.0.1:{port}"


def _default_workers(environ: Mapping[str, str]) -> int:
    """The worker count when ``--workers`` is not given: ``$WEB_CONCURRENCY``, else 2.

    Raises:
        UsageError: ``WEB_CONCURRENCY`` is not a whole number >= 1.
    """
    text = environ.get("WEB_CONCURRENCY", "").strip()
    if not text:
        return DEFAULT_WORKERS
    workers = _whole_number(text)
    if workers is None or workers < 1:
        raise UsageError(f"WEB_CONCURRENCY={text!r}: expected a whole number >= 1")
    return workers


def _pattern(text: str) -> str:
    """argparse type of ``invalidate PATTERN``: a non-empty glob."""
    if not text:
        raise argparse.ArgumentTypeError("must be a non-empty Redis glob (e.g. 'user:*')")
    return text


def _workers(text: str) -> int:
    """argparse type of ``serve --workers``: a whole number >= 1."""
    workers = _whole_number(text)
    if workers is None or workers < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return workers


def _bind(text: str) -> str:
    """argparse type of ``serve --bind``: anything gunicorn takes, but not empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected HOST:PORT (or unix:PATH)")
    return text


@contextlib.contextmanager
def _package_logging(verbose: bool) -> Iterator[None]:
    """Route the package's log records for the duration of one command.

    Without a handler, Python's last-resort handler would print every warning (one per
    failed attempt) to stderr next to our one-line error; ``--verbose`` shows them, with
    the program name, instead. Records still propagate to handlers the caller configured.
    """
    logger = logging.getLogger("dragonfly_cache")
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    else:
        handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _exit_code(code: object) -> int:
    """The int behind a ``SystemExit.code`` (None is success, a message is failure)."""
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_FAILURE


# -- the parser ---------------------------------------------------------------------------


def _add_common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Add the global options, accepted before or after the command.

    Only the top-level parser has real defaults: a subparser's default would overwrite a
    value given before the command, so there they are SUPPRESS (set only when given).
    Each parser gets its own actions rather than a shared parent parser: argparse shares a
    parent's action objects, so a default set through one parser would leak into the others.
    """
    parser.add_argument("--config", metavar="FILE", type=Path,
                        default=None if top else argparse.SUPPRESS,
                        help="YAML config file (root key 'cache:'); default: the environment "
                             "(DRAGONFLY_ADDRESSES, DRAGONFLY_PASSWORD, CACHE_KEY_PREFIX, ...)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        default=False if top else argparse.SUPPRESS,
                        help="also print the package's warnings (retries, failures)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Check, inspect and manage a dragonfly_cache deployment.",
        epilog="Exit codes: 0 success; 1 unhealthy/unreachable server or aborted; "
               "2 usage or configuration error, or a missing extra.")
    _add_common_options(parser, top=True)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    ping = commands.add_parser(
        "ping", help="check the server: prints 'PONG ADDRESS SERVER VERSION'",
        description="PING + INFO the configured server. Exit 0 and one line "
                    "'PONG ADDRESS SERVER VERSION' when healthy; exit 1 and one line on "
                    "stderr when not.")
    _add_common_options(ping, top=False)
    ping.set_defaults(run=_cmd_ping)

    stats = commands.add_parser(
        "stats", help="print health() as JSON (this process's counters)",
        description="Print the health report as JSON: status, server kind and version, "
                    "breaker state, and the L1/L2 counters. The counters are this fresh "
                    "process's own (near zero), not a running app's; for those, ask the app "
                    "(GET /api/v1/admin/cache/stats). Exit 0 when healthy, 1 when not.")
    _add_common_options(stats, top=False)
    stats.set_defaults(run=_cmd_stats)

    invalidate = commands.add_parser(
        "invalidate", help="remove the keys matching a glob",
        description="Remove every key matching the Redis glob PATTERN (without the key "
                    "prefix) with SCAN + UNLINK, and print how many were removed. A pattern "
                    "with no literal prefix ('*', '?*', '[a-z]*': it may match every key) "
                    "asks for confirmation on the terminal, and without one is refused, "
                    "unless --yes is given.")
    invalidate.add_argument("pattern", metavar="PATTERN", type=_pattern,
                            help="Redis glob over keys without the prefix, e.g. 'user:*'")
    invalidate.add_argument("-y", "--yes", action="store_true",
                            help="do not ask before a pattern that may match every key")
    _add_common_options(invalidate, top=False)
    invalidate.set_defaults(run=_cmd_invalidate)

    serve = commands.add_parser(
        "serve", help="run the demo app under gunicorn",
        description="Replace this process with gunicorn serving the demo app "
                    f"({DEMO_APP}). The cache is configured from the environment.")
    serve.add_argument("--bind", metavar="HOST:PORT", type=_bind,
                       help=f"address to listen on (default: $BIND, else 127.0.0.1:$PORT, "
                            f"else 127.0.0.1:{DEFAULT_PORT})")
    serve.add_argument("--workers", metavar="N", type=_workers,
                       help=f"worker processes (default: $WEB_CONCURRENCY, or {DEFAULT_WORKERS})")
    _add_common_options(serve, top=False)
    serve.set_defaults(run=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success; 1 unhealthy or unreachable server, or aborted;
        2 usage or configuration error, or a missing extra.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error; argparse printed it
        return _exit_code(exc.code)
    run: Command = args.run
    with _package_logging(args.verbose):
        try:
            return run(args)
        except (ConfigError, UsageError, MissingExtraError) as exc:
            # One line: the variable or key (never a secret's value), or the install line.
            Console().error(f"error: {exc}")
            return EXIT_USAGE
        except KeyboardInterrupt:
            Console().error("interrupted")
            return 130
