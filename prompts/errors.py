"""User errors: one clear line, exit status 2, no traceback."""
from __future__ import annotations

import functools
import logging
import sys


class UserError(Exception):
    """Bad input from the user: the message names the file, key or value and what to do."""


def run_cli(main):
    """Wrap a CLI entry point: `UserError` becomes one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except BrokenPipeError:  # output piped into `head`
            sys.stderr.close()
            raise SystemExit(0) from None
        except KeyboardInterrupt:
            print("interrupted; re-run the same command to resume", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper


def setup_logging(verbose: bool = False) -> None:
    """Readable logs: time, level only when not INFO, message."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
