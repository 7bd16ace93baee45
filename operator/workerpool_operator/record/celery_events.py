"""Celery's event stream and the workers' queues, read from the broker (I/O; needs Celery, the ``worker`` extra).

Celery's own receiver (``app.events.Receiver``) on an app that knows nothing but the broker: no import of the
user's app. Events travel over the broker (the ``celeryev`` fanout exchange: Redis PUBLISH/SUBSCRIBE), so a
recorder sees only the events sent after it subscribed. kombu's consumer blocks, so it runs in a thread of its
own; the recording's loop collects what arrived with :meth:`EventListener.drain`. Which queues each worker
consumes comes from Celery's remote control (``inspect active_queues``), over the same broker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from workerpool_operator.brokers import BrokerConfig, BrokerURLError
from workerpool_operator.observe.failures import scrub
from workerpool_operator.worker.broker_tls import verified_by_default

log = logging.getLogger(__name__)

__all__ = ["EventListener", "celery_available"]

CONNECT_RETRIES = 3


def celery_available() -> bool:
    try:
        import celery  # noqa: F401
    except ImportError:
        return False
    return True


class EventListener:
    """Captures every event on ``config``'s broker from :meth:`start` until :meth:`stop`."""

    def __init__(self, config: BrokerConfig) -> None:
        from celery import Celery

        self.app = Celery("workerpool-record", broker=config.url, set_as_current=False)
        options: dict[str, Any] = {}
        if config.global_keyprefix:
            options["global_keyprefix"] = config.global_keyprefix
        if config.sentinel_master:
            options["master_name"] = config.sentinel_master
        self.app.conf.broker_transport_options = options
        tls = verified_by_default(config.url, None)
        if tls is not None:
            self.app.conf.broker_use_ssl = tls
        self.app.conf.broker_connection_retry_on_startup = True
        try:
            self._secrets = [config.address().password]
        except BrokerURLError:
            self._secrets = []
        self.error: str | None = None
        self.listening = threading.Event()  # subscribed: events from now on arrive
        self.hostnames: set[str] = set()  # workers whose events (of any kind) arrived
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name="celery-events", daemon=True)

    def start(self) -> EventListener:
        self._thread.start()
        return self

    def drain(self) -> list[dict[str, Any]]:
        """The task events that arrived since the last call, in arrival order."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def stop(self, timeout: float = 5.0) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout)

    def worker_queues(self, timeout: float = 1.0) -> dict[str, frozenset[str]]:
        """Each worker that answered ``inspect active_queues`` within ``timeout``: the queues it consumes."""
        replies = self.app.control.inspect(timeout=timeout).active_queues() or {}
        return {
            str(host): frozenset(str(q.get("name")) for q in queues if isinstance(q, Mapping))
            for host, queues in replies.items()
            if isinstance(queues, list)
        }

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        if event.get("hostname"):
            self.hostnames.add(str(event["hostname"]))
        if kind.startswith("task-"):
            with self._lock:
                self._events.append(event)
        self.listening.set()

    def _run(self) -> None:
        listener = self
        base: Any = self.app.events.Receiver

        class Receiver(base):  # type: ignore[misc, valid-type]
            connect_max_retries = CONNECT_RETRIES
            iterations = 0

            def on_iteration(self) -> None:
                # The SUBSCRIBE goes out in the first wait for events; from the second on, nothing is missed.
                self.iterations += 1
                if self.iterations > 1:
                    listener.listening.set()

        try:
            with self.app.connection_for_read() as connection:
                self._receiver = Receiver(connection, handlers={"*": self._on_event}, app=self.app)
                for _ in self._receiver.itercapture(limit=None, timeout=None, wakeup=True):
                    pass
        except Exception as error:  # the recording goes on from the reports; the header says why
            self.error = scrub(f"{type(error).__name__}: {error}", self._secrets)
            log.debug("event listener stopped", exc_info=error)
