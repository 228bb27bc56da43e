"""alert-hook: the catch-all webhook Alertmanager notifies (deploy/alertmanager/alertmanager.yml).

An incident log for deploy/docker-compose.yml: every notification, firing and resolved, is appended as
one JSON line to /var/log/alert-hook/notifications.jsonl and printed in one line to stdout
(`docker compose logs alert-hook`). Requests must carry the bearer token in /run/secrets/webhook_token.
Replace it with your ticketing or chat-ops endpoint in production. Standard library only.
"""

import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = os.environ.get("ALERT_HOOK_LOG", "/var/log/alert-hook/notifications.jsonl")
TOKEN_FILE = os.environ.get("ALERT_HOOK_TOKEN_FILE", "/run/secrets/webhook_token")


def token() -> str:
    with open(TOKEN_FILE) as handle:
        return handle.read().strip()


class Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
        if self.path != "/alertmanager":
            self.send_error(404)
            return
        if not hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token()}"):
            self.send_error(401)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            message = json.loads(body)
        except ValueError:
            self.send_error(400)
            return
        with open(LOG, "a") as log:
            log.write(json.dumps(message) + "\n")
        names = sorted({a.get("labels", {}).get("alertname", "?") for a in message.get("alerts", [])})
        print(f"{message.get('status')} {message.get('groupKey')} {','.join(names)}", flush=True)
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    ThreadingHTTPServer(("0.0.0.0", port), Hook).serve_forever()
