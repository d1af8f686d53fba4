# A real SMTP server for the notifier's mail tests: aiosmtpd's own SMTP
# protocol on a port the kernel picks (written to the port file once
# listening), each message saved whole as <n>.eml in the mail folder
# (written, then renamed), after a few X-Test-* lines saying how it came:
# envelope recipients, TLS, authentication.
#
#   smtpd.py MAIL_DIR PORT_FILE [none|starttls|tls CERT KEY [USER PASSWORD]]
import asyncio
import os
import pathlib
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Save:
    def __init__(self, folder):
        self.folder = pathlib.Path(folder)
        self.n = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # A mailbox that does not exist: refused for good.
        if address.startswith("nobody@"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        tmp = self.folder / f".{self.n}.tmp"
        head = (
            "X-Envelope-To: " + ", ".join(envelope.rcpt_tos) + "\r\n"
            + "X-Test-TLS: " + ("yes" if session.ssl or server.transport.get_extra_info("ssl_object") else "no") + "\r\n"
            + "X-Test-Auth: " + ("yes" if session.authenticated else "no") + "\r\n"
        )
        tmp.write_bytes(head.encode() + (envelope.original_content or envelope.content))
        os.rename(tmp, self.folder / f"{self.n}.eml")
        return "250 OK"


async def main():
    folder, portfile = sys.argv[1], sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 else "none"
    handler = Save(folder)
    kw, server_ssl = {}, None
    if mode in ("starttls", "tls"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[4], sys.argv[5])
        if mode == "starttls":
            kw.update(tls_context=ctx, require_starttls=True)
        else:
            server_ssl = ctx
        if len(sys.argv) > 7:
            user, password = sys.argv[6].encode(), sys.argv[7].encode()

            def auth(server, session, envelope, mechanism, data):
                ok = isinstance(data, LoginPassword) and data.login == user and data.password == password
                return AuthResult(success=ok)

            kw.update(authenticator=auth, auth_required=True, auth_require_tls=True)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, **kw), "127.0.0.1", 0, ssl=server_ssl
    )
    port = server.sockets[0].getsockname()[1]
    pathlib.Path(portfile + ".tmp").write_text(str(port))
    os.rename(portfile + ".tmp", portfile)
    await server.serve_forever()


asyncio.run(main())
