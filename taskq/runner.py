"""Running one delivery: decide, decode, call, and say what comes next.

The runner never talks to Redis: it turns a delivery into an
:class:`~taskq.delivery.Outcome` (acknowledge, retry later, or dead-letter)
that the worker settles in batches.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time
import traceback
from typing import Any

from taskq import message as wire
from taskq.context import Context
from taskq.delivery import Delivery, Outcome, Rejection, Settle, dead_record
from taskq.errors import Retry, TimeLimitExceeded, ValidationError
from taskq.handlers import Handler, validation_reason
from taskq.scripts import pack_message

log = logging.getLogger("taskq.runner")

#: What a handler without a Context parameter is called with.
NO_CONTEXT: Any = None


class Runner:
    """Runs deliveries for one worker; shared by its handler threads."""

    def __init__(self, worker_id: str, max_payload_bytes: int) -> None:
        self.worker_id = worker_id
        self.max_payload_bytes = max_payload_bytes
        self._local = threading.local()
        #: thread id -> deadline (monotonic seconds) of the handlers that
        #: run under a time limit.
        self.deadlines: dict[int, float] = {}

    def run(self, delivery: Delivery) -> Outcome:
        sub = delivery.sub
        fields = delivery.fields
        target = fields.get(wire.GROUP)
        if target is not None and target != sub.group_bytes:
            # A retry or replay that belongs to another group of the topic.
            return Outcome(Settle.ACK, delivery)
        if sub.until_ms is not None and wire.entry_ms(delivery.id) >= sub.until_ms:
            return Outcome(Settle.ACK, delivery)  # past the end of a replay
        handler = sub.handler_for(fields)
        if isinstance(handler, Rejection):
            return self._reject(delivery, handler.reason, handler.text)
        # A first delivery of a first attempt (nearly every entry) needs no
        # parsing of its attempt number.
        if delivery.deliveries == 1 and wire.ATTEMPT not in fields:
            attempt = 1
        else:
            attempt = delivery.attempt
        if attempt > handler.max_attempts:
            # Only redeliveries push the count past the limit: the worker
            # that ran the last allowed attempt died while running it.
            handler.abandon(delivery.pk.partition, fields)
            return self._dead(
                delivery,
                "worker_lost",
                attempts=attempt - 1,
                error=f"the worker running attempt {attempt - 1} of "
                f"{handler.max_attempts} was lost; not running it again",
                level=logging.ERROR,
                last_ms=delivery.previous_ms,
            )
        payload = fields[wire.PAYLOAD]
        if len(payload) > self.max_payload_bytes:
            # Written by something that does not check (a raw XADD, another
            # tool): set aside rather than parsed.
            return self._reject(
                delivery,
                "payload_too_large",
                f"the payload is {len(payload)} bytes, over the limit of "
                f"{self.max_payload_bytes} bytes (max_payload_bytes)",
            )
        try:
            decoded = handler.decode(payload)
        except ValidationError as exc:
            return self._reject(delivery, validation_reason(exc), str(exc))
        started = time.time()
        try:
            if handler.is_async or handler.timeout_s or handler.context_param:
                self._call(handler, decoded, self._context(delivery, handler, attempt))
            else:  # the common case, without the two calls above
                handler.call(decoded, NO_CONTEXT)
        except Retry as exc:
            return self._failed(
                delivery, handler, attempt, int(started * 1000), exc, exc.delay
            )
        except Exception as exc:
            started_ms = int(started * 1000)
            return self._failed(delivery, handler, attempt, started_ms, exc, None)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "Ran %s (%s, attempt %d) in %.3f s.",
                handler.name,
                delivery.describe(),
                attempt,
                time.time() - started,
            )
        return Outcome(Settle.ACK, delivery)

    def close_thread(self) -> None:
        """Release what the calling handler thread kept (its event loop)."""
        loop = getattr(self._local, "loop", None)
        if loop is not None:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._local.loop = None

    # -- calling ---------------------------------------------------------------

    def _context(self, delivery: Delivery, handler: Handler, attempt: int) -> Any:
        if handler.context_param is None:
            return None
        key = delivery.fields.get(wire.KEY)
        return Context(
            topic=delivery.pk.topic,
            partition=delivery.pk.partition,
            message_id=wire.origin_of(
                delivery.fields, delivery.pk.topic, delivery.pk.partition, delivery.id
            ).decode(),
            key=None if key is None else wire.text(key),
            attempt=attempt,
            max_attempts=handler.max_attempts,
            group=delivery.sub.group,
            worker=self.worker_id,
            scheduled_at=wire.tick_of(delivery.fields),
            missed=wire.int_field(delivery.fields, wire.MISSED),
            entry_id=delivery.id.decode(),
        )

    def _call(self, handler: Handler, decoded: Any, context: Any) -> None:
        if handler.is_async:
            loop = getattr(self._local, "loop", None)
            if loop is None:
                loop = self._local.loop = asyncio.new_event_loop()
            coro = handler.call(decoded, context)
            if handler.timeout_s is not None:
                coro = _time_limited(coro, handler.timeout_s)
            loop.run_until_complete(coro)
            return
        if handler.timeout_s is None:
            handler.call(decoded, context)
            return
        ident = threading.get_ident()
        self.deadlines[ident] = time.monotonic() + handler.timeout_s
        try:
            handler.call(decoded, context)
        finally:
            self.deadlines.pop(ident, None)

    def interrupt_overdue(self) -> int:
        """Raise TimeLimitExceeded in handler threads past their deadline.

        The exception is delivered the next time the thread runs Python
        code; a thread blocked inside a C call (a socket read without a
        timeout, say) is interrupted only when that call returns.
        """
        now = time.monotonic()
        count = 0
        for ident, deadline in list(self.deadlines.items()):
            if now >= deadline and self.deadlines.pop(ident, None) is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(ident), ctypes.py_object(TimeLimitExceeded)
                )
                count += 1
        return count

    # -- outcomes ----------------------------------------------------------------

    def _failed(
        self,
        delivery: Delivery,
        handler: Handler,
        attempt: int,
        started_ms: int,
        exc: BaseException,
        delay_s: float | None,
    ) -> Outcome:
        error = f"{type(exc).__name__}: {exc}"
        if attempt >= handler.max_attempts:
            return self._dead(
                delivery,
                "retries_exhausted",
                attempts=attempt,
                error_type=type(exc).__name__,
                error=str(exc),
                tb="".join(traceback.format_exception(exc)),
                level=logging.ERROR,
                first_ms=started_ms,
                last_ms=started_ms,
            )
        if delay_s is None:
            delay_s = handler.backoff.delay(attempt)
        log.warning(
            "%s failed on attempt %d of %d (%s): %s; retrying in %.1f s.",
            handler.name,
            attempt,
            handler.max_attempts,
            delivery.describe(),
            error,
            delay_s,
        )
        if handler.ordered:
            # Tried again where it is: later messages of its key wait.
            return Outcome(
                Settle.RETRY_IN_PLACE, delivery, delay_ms=int(delay_s * 1000)
            )
        fields = dict(delivery.fields)
        fields[wire.ATTEMPT] = str(attempt + 1).encode()
        fields[wire.GROUP] = delivery.sub.group_bytes
        fields.setdefault(wire.FIRST_ATTEMPT, str(started_ms).encode())
        fields[wire.ORIGIN] = wire.origin_of(
            delivery.fields, delivery.pk.topic, delivery.pk.partition, delivery.id
        )
        tag = b"r-%s-%d" % (delivery.id, attempt)
        return Outcome(
            Settle.RETRY,
            delivery,
            delay_ms=int(delay_s * 1000),
            packed=pack_message(tag, fields),
        )

    def _reject(self, delivery: Delivery, reason: str, text: str) -> Outcome:
        # Deterministic failures: running the entry again cannot help, so it
        # is set aside at once (and can be replayed after a fix).
        return self._dead(
            delivery, reason, attempts=delivery.attempt, error=text, level=logging.ERROR
        )

    def _dead(
        self,
        delivery: Delivery,
        reason: str,
        *,
        attempts: int,
        error: str,
        level: int,
        error_type: str = "",
        tb: str = "",
        first_ms: int | None = None,
        last_ms: int | None = None,
    ) -> Outcome:
        now_ms = int(time.time() * 1000)
        fields = delivery.fields
        if first_ms is not None and wire.FIRST_ATTEMPT not in fields:
            fields = dict(fields)
            fields[wire.FIRST_ATTEMPT] = str(first_ms).encode()
            delivery.fields = fields
        log.log(
            level,
            "Dead-lettering %s: %s after %d attempt(s): %s%s",
            delivery.describe(),
            reason,
            attempts,
            f"{error_type}: " if error_type else "",
            error,
            extra={
                "taskq_stream": delivery.pk.stream,
                "taskq_entry": delivery.id.decode(),
                "taskq_reason": reason,
            },
        )
        record = dead_record(
            delivery,
            reason=reason,
            attempts=attempts,
            worker=self.worker_id,
            now_ms=now_ms,
            error_type=error_type,
            error=error,
            traceback=tb,
            last_attempt_ms=last_ms,
        )
        return Outcome(Settle.DEAD, delivery, record=record)


async def _time_limited(coro: Any, timeout_s: float) -> Any:
    try:
        return await asyncio.wait_for(coro, timeout_s)
    except TimeoutError:
        raise TimeLimitExceeded(
            f"ran longer than its timeout of {timeout_s:g} s"
        ) from None
