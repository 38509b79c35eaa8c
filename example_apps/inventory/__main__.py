"""``python -m example_apps.inventory [--port 8002]``: migrate, seed, serve with gunicorn.

``python -m example_apps.inventory <django command> ...`` runs a management command instead
(``migrate``, ``shell``, ``dbshell``, ``showmigrations``, ...).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_apps.inventory.settings")
    from django.core.management import execute_from_command_line

    argv = sys.argv[1:]
    if argv and not argv[0].startswith("-"):
        execute_from_command_line([sys.argv[0], *argv])
        return
    from example_apps._serving import parse_args, serve_wsgi

    args = parse_args("inventory", 8002, argv)
    # the schema and the seed catalogue are migrations; applying them is idempotent
    execute_from_command_line([sys.argv[0], "migrate", "--noinput", "--verbosity", "0"])
    serve_wsgi("example_apps.inventory.wsgi:application", args)


if __name__ == "__main__":
    main()
