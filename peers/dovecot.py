"""Dovecot 2.3 IMAP + POP3 (+ LMTP) validating XOAUTH2/OAUTHBEARER by RFC 7662 introspection."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from string import Template

from .idp import IdP
from .process import HOST, PeerError, Proc, free_ports, port_open, tail, wait_until

TEMPLATES = Path(__file__).with_name("templates")
DOVECOT = "/usr/sbin/dovecot"


class Dovecot:
    """A Dovecot master process (``dovecot -F``) bound to 127.0.0.1, no TLS; it introspects at
    the IdP over https, trusting the test CA (``tls_ca_cert_file``).

    Attributes: ``imap_port``, ``pop3_port``, ``host``, ``idp`` (the IdP it asks),
    ``lmtp_socket`` and ``auth_postfix_socket`` (Paths, mode 0666), ``mail_root`` (homes are
    ``mail_root/<user>``, Maildir, owned by nobody), ``config`` (Path), ``log`` (Path).
    Any user exists (static userdb); a login is accepted when the IdP's introspection says the
    token is active and its ``email`` equals the SASL user name.
    """

    def __init__(self, name: str, idp: IdP, workdir: Path, log_dir: Path) -> None:
        self.name = name
        self.idp = idp
        self.host = HOST
        self.dir = workdir / name
        run = self.dir / "run"
        self.mail_root = self.dir / "mail"
        for d in (self.dir, run, self.dir / "state", self.mail_root):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        shutil.chown(self.mail_root, "nobody", "nogroup")
        self.imap_port, self.pop3_port = free_ports(2)
        self.lmtp_socket = run / "lmtp"
        self.auth_postfix_socket = run / "auth-postfix"
        self.log = log_dir / f"{name}.log"
        self.config = self.dir / "dovecot.conf"
        oauth2_conf = self.dir / "dovecot-oauth2.conf.ext"
        cid, secret = idp.introspection_client
        values = {
            "base_dir": run,
            "state_dir": self.dir / "state",
            "log_path": self.log,
            "imap_port": self.imap_port,
            "pop3_port": self.pop3_port,
            "mail_root": self.mail_root,
            "oauth2_conf": oauth2_conf,
            "introspection_url": (
                f"https://{cid}:{secret}@{HOST}:{idp.port}"
                + idp.introspection_endpoint.removeprefix(idp.base_url)
            ),
            "instance": name,
            "idp_ca_file": idp.ca_file,
        }
        for template, target in (
            ("dovecot.conf", self.config),
            ("dovecot-oauth2.conf.ext", oauth2_conf),
        ):
            text = Template((TEMPLATES / template).read_text()).substitute(values)
            target.write_text(text)
            target.chmod(0o644)
        started = time.monotonic()
        self.proc = Proc(
            name, [DOVECOT, "-F", "-c", str(self.config)], log_dir / f"{name}-stdout.log"
        )
        try:
            wait_until(
                lambda: (
                    port_open(self.imap_port)
                    and port_open(self.pop3_port)
                    and self.lmtp_socket.exists()
                    and self.auth_postfix_socket.exists()
                ),
                f"dovecot {name} (imap {self.imap_port}, pop3 {self.pop3_port})",
                log=self.log,
                alive=self.proc.alive,
            )
        except PeerError as e:
            self.stop()
            raise PeerError(f"{e}\n{tail(log_dir / f'{name}-stdout.log')}") from e
        self.start_seconds = time.monotonic() - started

    def mailbox(self, user: str) -> Path:
        return self.mail_root / user / "Maildir"

    def stop(self) -> None:
        self.proc.stop()

    def __repr__(self) -> str:
        return f"<Dovecot {self.name} imap={self.imap_port} pop3={self.pop3_port} idp={self.idp}>"
