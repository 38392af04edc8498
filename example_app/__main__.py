"""``python -m example_app``: serve the demo helpdesk on http://127.0.0.1:5000/.

With the local peers installed (``scripts/install-peers`` as root) it runs in sandbox mode:
a local IdP, Dovecot and Postfix, so the whole walkthrough works offline. ``--plain`` skips it.
``--help`` lists the environment variables it reads.
"""

import argparse
import os
import signal
import sys

from example_app import create_app, sandbox

HOST = "127.0.0.1"

ENVIRONMENT = """\
environment:
  PORT                      port on 127.0.0.1 (default 5000)
  DATABASE_URL              SQLAlchemy URL (default sqlite:///helpdesk.sqlite3 in instance/)
  SECRET_KEY                Flask's secret key (default: a development-only key)
  MAILOAUTH_*               any flask-mailoauth setting, e.g. MAILOAUTH_ALLOW_INSECURE_HTTP=1
                            and MAILOAUTH_CA_BUNDLE=its-ca.pem to try your own IdP on
                            https://127.0.0.1 with --plain; values are read as JSON when they
                            parse (1, true, 10, ["a", "b"])
  FLASK_*                   any other Flask setting, prefix removed (FLASK_DEBUG=true)
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The demo's command line; ``--help`` prints it and exits without serving."""
    parser = argparse.ArgumentParser(
        prog="python -m example_app",
        description="The flask-mailoauth demo helpdesk (admin@example.test / admin).",
        epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="no sandbox: the plain helpdesk, for a real identity provider and mail server",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args(sys.argv[1:])
    # SIGTERM ends the demo like Ctrl-C does, so the sandbox's peers are stopped (atexit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = int(os.environ.get("PORT", "5000"))
    url = f"http://{HOST}:{port}/"
    missing = [] if args.plain else sandbox.missing_peers()
    if args.plain or missing:
        app = create_app()
        print(f"\n  flask-mailoauth demo helpdesk: {url}  (admin@example.test / admin)")
        if missing:
            print("  Sandbox mode is off, so the OAuth2 walkthrough needs a real provider:")
            for reason in missing:
                print(f"    - {reason}")
            print("  Run `sudo scripts/install-peers` (Debian), then `scripts/demo` again.\n")
    else:
        box = sandbox.start(f"{url}mailoauth/callback")
        app = create_app(
            {
                # A fresh database each run: the local IdP keeps its grants in memory only.
                "SQLALCHEMY_DATABASE_URI": f"sqlite:///{box.workdir.name}/sandbox.sqlite3",
                "MAILOAUTH_ALLOW_INSECURE_HTTP": True,  # the local IdP listens on loopback
                "MAILOAUTH_CA_BUNDLE": str(box.idp.ca_file),  # and its certificate's CA
            }
        )
        sandbox.configure(app, box)
        print(sandbox.banner(url, box), flush=True)
    app.run(host=HOST, port=port)


if __name__ == "__main__":
    main()
