"""cage_connection: talk to the cage that started this process, as the invocation that started it.

Standard library only. A module starts this process with ``ctx.child_command(...)``, which puts
in the environment:

- ``CAGE_API``: the cage's HTTP API, e.g. ``http://127.0.0.1:43121``;
- ``CAGE_INVOCATION_ID``: the invocation this process acts as, e.g. ``demo/1795587912268001``;
- ``CAGE_TOKEN``: the token that lets it act so, valid while that invocation runs;
- ``PYTHONPATH``: the directory of this file, so ``import cage_connection`` just works.

Functions: ``message_to_invocation_send``, ``message_to_invocation_receive``, ``call``,
``enqueue``, ``invocation_id``. Failures raise ``CageError`` subclasses carrying the cage's
reason text.
"""

import json
import os
import urllib.error
import urllib.request

__all__ = [
    "CageError",
    "MessageSendError",
    "MessageReceiveTimeout",
    "message_to_invocation_send",
    "message_to_invocation_receive",
    "call",
    "enqueue",
    "job_add",
    "invocation_id",
]


class CageError(Exception):
    """A request to the cage failed; ``kind`` and ``reason`` say why, ``status`` is the HTTP status."""

    def __init__(self, reason, kind="error", status=None):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.status = status


class MessageSendError(CageError):
    """A message could not be handed over (no receiver in time, target finished or unknown)."""


class MessageReceiveTimeout(CageError):
    """No message arrived on the port(s) in time."""


def _env(name):
    value = os.environ.get(name)
    if not value:
        raise CageError(
            "%s is not set: this process was not started by a cage module (ctx.child_command)" % name,
            kind="no_cage",
        )
    return value


def invocation_id():
    """The invocation this process acts as."""
    return _env("CAGE_INVOCATION_ID")


def _request(method, path, body=None, wait=None, error=CageError):
    url = _env("CAGE_API").rstrip("/") + path
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Bearer " + _env("CAGE_TOKEN"))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    # The HTTP timeout outlasts the cage's own wait, so the cage's answer is what we see.
    http_timeout = None if wait is None else wait + 30
    try:
        with urllib.request.urlopen(req, timeout=http_timeout) as resp:
            return json.loads(resp.read().decode("utf-8") or "null")
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read().decode("utf-8"))
        except ValueError:
            detail = {"error": "http_%d" % e.code, "message": e.reason}
        kind = detail.get("error", "error")
        reason = detail.get("message", str(e))
        if kind == "receive_timeout":
            raise MessageReceiveTimeout(reason, kind, e.code) from None
        raise error(reason, kind, e.code) from None
    except urllib.error.URLError as e:
        raise error("cannot reach the cage at %s: %s" % (url, e.reason), "unreachable") from None


def message_to_invocation_send(target, port, message, timeout=None):
    """Hand ``message`` (str or bytes) to a receiver on ``port`` of invocation ``target``.

    Returns once it has been handed over; raises ``MessageSendError`` with the reason otherwise.
    """
    if isinstance(message, bytes):
        message = message.decode("utf-8")
    body = {"target": target, "port": port, "message": message}
    if timeout is not None:
        body["timeout_secs"] = timeout
    _request("POST", "/v1/messages/send", body, wait=timeout or 90, error=MessageSendError)


def message_to_invocation_receive(port, timeout=None):
    """Wait for a message on ``port`` of this invocation and return it (a str).

    ``port`` may be a list of ports: then ``(port, message)`` is returned. Raises
    ``MessageReceiveTimeout`` if nothing arrives within ``timeout`` seconds.
    """
    body = {"ports": list(port)} if isinstance(port, (list, tuple)) else {"port": port}
    if timeout is not None:
        body["timeout_secs"] = timeout
    got = _request("POST", "/v1/messages/receive", body, wait=timeout)
    if isinstance(port, (list, tuple)):
        return got["port"], got["message"]
    return got["message"]


def call(cage, target, args=None, timeout=30):
    """Call ``target`` ("module.method") on ``cage`` synchronously and return its result."""
    body = {"cage": cage, "target": target, "args": args, "timeout_secs": timeout}
    return _request("POST", "/v1/call", body, wait=timeout)["result"]


def enqueue(cage, target, args=None, queue="retry", priority=0, key=None, delay=None, group=None):
    """Queue ``target`` on ``cage`` durably; return the call id once it is on disk.

    ``group`` (a customer, a tenant) is what the queue's ``group_concurrency``,
    ``group_rate_limit`` and round-robin dispatch count by.
    """
    body = {"cage": cage, "target": target, "args": args, "queue": queue, "priority": priority}
    if key is not None:
        body["key"] = key
    if group is not None:
        body["group"] = group
    if delay is not None:
        body["delay_secs"] = delay
    return _request("POST", "/v1/enqueue", body, wait=30)["id"]


def job_add(target, args=None, at=None, in_secs=None, every_secs=None, queue="retry", catch_up="once", replace=False):
    """Add a job to this cage: once ``at`` (RFC 3339) or after ``in_secs``, or every ``every_secs``.

    Returns the job as stored (a dict with its ``id``).
    """
    body = {"target": target, "args": args, "queue": queue, "catch_up": catch_up, "replace": replace}
    for name, value in (("at", at), ("in_secs", in_secs), ("every_secs", every_secs)):
        if value is not None:
            body[name] = value
    return _request("POST", "/v1/jobs", body, wait=30)
