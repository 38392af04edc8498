"""``python -m example_app``: serve the demo helpdesk on http://127.0.0.1:5000/.

With the local peers installed (``scripts/install-peers`` as root) it runs in sandbox mode:
a local IdP, Dovecot and Postfix, so the whole walkthrough works offline. ``--plain`` skips it.
"""

import os
import signal
import sys

from example_app import create_app, sandbox

HOST = "127.0.0.1"


def main() -> None:
    # SIGTERM ends the demo like Ctrl-C does, so the sandbox's peers are stopped (atexit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = int(os.environ.get("PORT", "5000"))
    url = f"http://{HOST}:{port}/"
    missing = [] if "--plain" in sys.argv else sandbox.missing_peers()
    if "--plain" in sys.argv or missing:
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
                "MAILOAUTH_ALLOW_INSECURE_HTTP": True,  # the local IdP speaks http on loopback
            }
        )
        sandbox.configure(app, box)
        print(sandbox.banner(url, box), flush=True)
    app.run(host=HOST, port=port)


if __name__ == "__main__":
    main()
