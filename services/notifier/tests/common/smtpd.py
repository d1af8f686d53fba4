# A real SMTP server for the notifier's mail test: aiosmtpd's own SMTP
# protocol on a port the kernel picks (written to argv[2] once listening),
# each message saved whole as <n>.eml in argv[1] (written, then renamed).
import asyncio
import os
import pathlib
import sys

from aiosmtpd.smtp import SMTP


class Save:
    def __init__(self, folder):
        self.folder = pathlib.Path(folder)
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        tmp = self.folder / f".{self.n}.tmp"
        head = "X-Envelope-To: " + ", ".join(envelope.rcpt_tos) + "\r\n"
        tmp.write_bytes(head.encode() + (envelope.original_content or envelope.content))
        os.rename(tmp, self.folder / f"{self.n}.eml")
        return "250 OK"


async def main():
    folder, portfile = sys.argv[1], sys.argv[2]
    handler = Save(folder)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pathlib.Path(portfile + ".tmp").write_text(str(port))
    os.rename(portfile + ".tmp", portfile)
    await server.serve_forever()


asyncio.run(main())
