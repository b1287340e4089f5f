"""The ``polyfit`` group and its one promise about errors: every error ends as one line on
stderr, never a usage dump or a traceback (unless ``--debug`` asks for it): exit 2 for bad usage
or input, exit 1 when the work ran but failed or a server was unreachable."""

from __future__ import annotations

import errno
import os
import sys
import traceback

import click

from polyfit_models.errors import BadInput, PolyfitError
from scheduler.early import discard
from store.db import dispose_all
from store.redact import redact_url

EXIT_FAILED = 1
EXIT_USAGE = 2
ENV_DEBUG = "POLYFIT_DEBUG"


class InputError(click.ClickException):
    """Raised when the user's input (a spec, a flag value, a name) is unusable: exit 2."""

    exit_code = EXIT_USAGE


class WorkFailed(click.ClickException):
    """Raised when the work ran but failed, or a server was unreachable: exit 1."""

    exit_code = EXIT_FAILED


def one_line(text: str) -> str:
    """One line, with every password hidden: errors may quote URLs (malformed ones too)."""
    return redact_url(" ".join(str(text).split())) or "error"


class PolyfitGroup(click.Group):
    """A group whose errors are one line on stderr, never a usage dump or a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        args = list(sys.argv[1:] if args is None else args)
        debug = os.environ.get(ENV_DEBUG, "") not in ("", "0") or "--debug" in args[:1]
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
            sys.stdout.flush()  # a full disk or a dead device shows here, not at exit
        except OSError as e:
            if e.errno not in _OUTPUT_ERRNOS:
                _fail(f"internal error: {e.__class__.__name__}: {e}", EXIT_FAILED, debug,
                      hint=not debug)
            _drop_stdout()
            _fail(f"cannot write the output: {e.strerror}", EXIT_USAGE, debug)
        except click.UsageError as e:
            _fail(e.format_message(), EXIT_USAGE, debug)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code, debug)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except BadInput as e:  # the user's input is unusable
            _fail(str(e), EXIT_USAGE, debug)
        except PolyfitError as e:  # a server unreachable, work that ran and failed
            _fail(str(e), EXIT_FAILED, debug)
        except Exception as e:  # noqa: BLE001 - the promise is: no traceback, unless asked
            _fail(f"internal error: {e.__class__.__name__}: {e}", EXIT_FAILED, debug,
                  hint=not debug)
        finally:
            discard()  # a local worker started early and never given its orders
            dispose_all()  # the command's connections (``store.db.shared_engine`` and others)
        sys.exit(rv if isinstance(rv, int) else 0)


#: Errors of a write to stdout pointed at a full disk or a device that takes nothing
#: (``> /dev/full``): one line, not an internal error.
_OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the exit does not fail again flushing what is left."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real stdout (a test runner's)
        pass


def _fail(message: str, code: int, debug: bool, hint: bool = False) -> None:
    if debug and sys.exc_info()[0] is not None:
        click.echo(redact_url(traceback.format_exc()).rstrip(), err=True)
    suffix = " (run with --debug, or POLYFIT_DEBUG=1, to see where)" if hint else ""
    click.echo(f"Error: {one_line(message)}{suffix}", err=True)
    sys.exit(code)


@click.group(cls=PolyfitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="polyfit")
@click.option("--debug", is_flag=True, help="On an unexpected error, print the traceback too "
                                            f"(or set {ENV_DEBUG}=1).")
def cli(debug: bool) -> None:
    """polyfit: sweep many small polynomial fits across CPU and GPU workers; results in SQL."""


def main() -> None:
    cli(prog_name="polyfit")
