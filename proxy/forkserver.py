"""Imported by the proxy's fork server only (the first of its preload modules, `offload.helper_context`).

A SIGTERM sent to the proxy's whole process group (systemd's default `KillMode=control-group`, GNU
`timeout`, a shell's job control) reaches the fork server as well. Left to its default it ends the fork
server at once, and with it the pipes through which the proxy learns that a helper process has ended: the
offload worker looks dead to its pool (the large pairs in flight are dropped) and the scoring process
looks as if it ended unasked (exit code 255), while both still run. The fork server is a helper like
the others: it ends when the proxy does (its pipe from the proxy reaches EOF). The helpers it starts
inherit the ignored SIGTERM; each one that acts on it sets its own handler.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
