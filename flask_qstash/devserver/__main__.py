"""Command line entry point: ``python -m flask_qstash.devserver``.

``flask qstash dev`` calls :func:`main` too, so both print the same banner and
take the same options.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import typing as t

if t.TYPE_CHECKING:  # pragma: no cover
    from . import DevServer


def print_banner(server: DevServer) -> None:
    """Print the URL, token and keys the way Upstash's dev server does.

    :param server: A started server.
    """
    lines = [
        "QStash development server is running.",
        "",
        "A local QStash-compatible server; each account below is isolated.",
        "",
        "Environment variables:",
        "",
        f"QSTASH_URL={server.url}",
        f"QSTASH_TOKEN={server.token}",
        f"QSTASH_CURRENT_SIGNING_KEY={server.current_signing_key}",
        f"QSTASH_NEXT_SIGNING_KEY={server.next_signing_key}",
        "",
        "Try it:",
        "",
        f"curl -X POST {server.url}/v2/publish/https://example.com \\",
        f'  -H "Authorization: Bearer {server.token}" -d "hello"',
        "",
    ]
    print("\n".join(lines), flush=True)  # noqa: T201


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flask_qstash.devserver",
        description="Run a local QStash-compatible server.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port, 0 for any free")
    parser.add_argument(
        "--db",
        default=":memory:",
        help="SQLite file that keeps state across restarts (default: in memory)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="divide retry backoff and Retry-After delays by this factor",
    )
    parser.add_argument(
        "--max-body-size",
        type=int,
        default=1024 * 1024,
        help="largest message body accepted, in bytes",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="logging level, such as DEBUG or WARNING"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the server until interrupted and return the exit status.

    :param argv: Command line arguments; ``sys.argv[1:]`` when ``None``.
    """
    from . import DevServer

    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )

    try:
        server = DevServer(
            host=args.host,
            port=args.port,
            database=args.db,
            speed=args.speed,
            max_body_size=args.max_body_size,
        ).start()
    except (OSError, ValueError, RuntimeError) as exc:
        logging.getLogger(__name__).error("Could not start the dev server: %s", exc)
        return 1

    print_banner(server)
    done = threading.Event()

    def _stop(signum: int, frame: t.Any) -> None:
        done.set()

    # Signal handlers can only be set from the main thread.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)

    try:
        while not done.wait(1.0):
            pass
    finally:
        server.stop()

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
