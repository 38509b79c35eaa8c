"""The manual instrumentation API (module-level functions re-exported by the package)."""

from __future__ import annotations

import functools
import html
import inspect
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import Context, copy_context
from typing import Any, ParamSpec, TypeVar, overload

from ._client import ExcInfo, get_client
from ._client import close as _close_client
from ._context import CURRENT_SPAN, PROPAGATION_CONTEXT
from ._propagation import ASGI_GETTER, DICT_GETTER, SENTRY_TRACE_HEADER, Getter, extract
from ._tracing import PropagationContext, Span, Transaction, _restore, names, valid_source

__all__ = [
    "capture_exception",
    "close",
    "continue_trace",
    "flush",
    "get_current_span",
    "get_trace_headers",
    "set_transaction_name",
    "start_span",
    "start_transaction",
    "trace",
    "trace_meta_tags",
    "use_span",
    "wrap_context",
]

logger = logging.getLogger("sentry_tracing_mw")

P = ParamSpec("P")
R = TypeVar("R")
#: ``use_span(tx)`` gives the transaction back as a Transaction (None as None).
S = TypeVar("S", bound="Span | None")


def start_transaction(
    name: str | Transaction = "<unlabeled transaction>",
    *,
    op: str | None = None,
    source: str = "custom",
    headers: Any = None,
    getter: Getter[Any] = DICT_GETTER,
    sampled: bool | None = None,
    custom_sampling_context: Mapping[str, Any] | None = None,
    origin: str = "manual",
    transaction: Transaction | None = None,
) -> Transaction:
    """Start a transaction: a new trace, or the one in ``headers`` (incoming carrier).

    ``start_transaction(continue_trace(headers, ...))`` (also ``transaction=``), sentry-sdk's
    pattern, gives that transaction back: ``continue_trace`` has started it already (its
    sampling decision is made; ``custom_sampling_context`` belongs to ``continue_trace``).
    """
    if transaction is None and isinstance(name, Transaction):
        transaction = name
    if transaction is not None:
        return _started(transaction, op, custom_sampling_context, sampled)
    client = get_client()
    name, op, source = names(name, op, source)
    if headers is not None and getter is DICT_GETTER and isinstance(headers, list | tuple):
        # (name, value) pairs, str or bytes (ASGI-style): read them as a scope's headers
        headers, getter = {"headers": headers}, ASGI_GETTER
    ctx = client.continue_trace(extract(headers, getter) if headers is not None else None)
    return client._start_transaction(
        name,
        op,
        source,
        origin,
        ctx,
        sampled,
        _sampling_extra(custom_sampling_context),
    )


def _started(tx: Any, op: str | None, custom: Any, sampled: bool | None) -> Transaction:
    """``start_transaction(tx)``: ``tx`` as it is (a new ``op`` applies)."""
    if not isinstance(tx, Transaction):
        raise TypeError(
            f"start_transaction(transaction=...) expects a Transaction, not {type(tx).__name__}"
        )
    if op is not None and tx._end is None:
        tx._op = names("-", op, "custom")[1]
    if custom is not None or sampled is not None:
        logger.debug(
            "start_transaction(%r): already started by continue_trace (its sampling "
            "decision is made): pass custom_sampling_context / sampled to continue_trace",
            tx._name,
        )
    return tx


def _sampling_extra(custom: Any) -> dict[str, Any] | None:
    """``custom_sampling_context`` as a dict (a value that is not a mapping is ignored)."""
    try:
        return dict(custom) if custom else None
    except Exception:
        logger.debug("ignoring custom_sampling_context of type %s", type(custom).__name__)
        return None


def continue_trace(
    headers: Any, name: str = "<unlabeled transaction>", **kwargs: Any
) -> Transaction:
    """Start a transaction that continues the trace in ``headers``."""
    return start_transaction(name, headers=headers, **kwargs)


def get_current_span() -> Span | None:
    """The current span (the transaction itself at the root), or None."""
    return CURRENT_SPAN.get()


def set_transaction_name(name: str, source: str = "custom") -> None:
    """Rename the current request's (or current span's) transaction from inside the app."""
    span = CURRENT_SPAN.get()
    tx = span._tx if span is not None else None
    if tx is None:
        logger.debug("set_transaction_name(%r): no current transaction", name)
        return
    tx.set_name(name, valid_source(source))


def start_span(
    op: str | None = None,
    description: str | None = None,
    *,
    origin: str = "manual",
    name: str | None = None,
) -> Span:
    """Start a child of the current span; a non-recording span when none is current.

    ``name`` is ``sentry-sdk``'s newer spelling of ``description``.
    """
    if name is not None and description is None:
        description = name
    parent = CURRENT_SPAN.get()
    if parent is not None:
        return parent.start_child(op, description, origin=origin)
    ctx = _propagation_context()
    from ._tracing import _DetachedSpan

    return _DetachedSpan(ctx, None, op, description, origin)


@contextmanager
def use_span(span: S) -> Iterator[S]:
    """Make ``span`` current for the block; the previous span is always restored."""
    token = CURRENT_SPAN.set(span)
    try:
        yield span
    finally:
        try:
            CURRENT_SPAN.reset(token)
        except (ValueError, RuntimeError):  # left in another context (a generator's)
            _restore(token)


def _propagation_context() -> PropagationContext:
    return get_client()._capture_context(CURRENT_SPAN.get())


def _current_trace() -> tuple[PropagationContext, str | None]:
    """The current trace context and the span id calls made here have as parent (None:
    the context's own)."""
    span = CURRENT_SPAN.get()
    if span is not None:
        return span._context(), span._span_id
    return _propagation_context(), None


def get_trace_headers() -> dict[str, str]:
    """Outgoing ``sentry-trace``, ``baggage`` (and ``traceparent``) for the current trace."""
    ctx, span_id = _current_trace()
    return ctx.headers(span_id)


def trace_meta_tags() -> str:
    """``<meta>`` tags that let a browser SDK continue the current trace.

    The ``baggage`` tag holds the Sentry members only: the third-party members a request
    brought (a session id, a user id) go on to the services it calls, not into its HTML,
    which a cache may show to other users (the browser SDK reads only ``sentry-`` ones).
    """
    ctx, span_id = _current_trace()
    trace = ctx.headers(span_id)[SENTRY_TRACE_HEADER]
    tags = [f'<meta name="sentry-trace" content="{html.escape(trace)}">']
    baggage = ctx.sentry_baggage()
    if baggage:
        tags.append(f'<meta name="baggage" content="{html.escape(baggage)}">')
    return "\n".join(tags)


def capture_exception(exc: BaseException | ExcInfo | None = None) -> str | None:
    """Send an error event linked to the current span; returns its event id.

    ``exc`` is an exception, an ``sys.exc_info()`` tuple (as ``sentry-sdk`` accepts) or
    None for the exception being handled; None is returned when there is nothing to send.
    """
    if exc is None:
        exc = sys.exc_info()[1]
        if exc is None:
            return None
    try:
        return get_client().capture_exception(exc)
    except Exception:
        logger.exception("capture_exception failed")
        return None


def flush(timeout: float | None = None) -> bool:
    """Block until every queued event is handled; False when ``timeout`` passed first.

    Handled means sent, or dropped and counted for a client report (Sentry unreachable,
    rate limited, rejected): True says nothing is left in the queue, not that Sentry
    accepted everything.
    """
    return get_client().flush(timeout)


def close(timeout: float | None = None) -> None:
    """Flush and stop the client; ``is_initialized()`` is False until ``init()`` again."""
    _close_client(timeout)


@overload
def trace(func: Callable[P, R]) -> Callable[P, R]: ...
@overload
def trace(
    func: None = None,
    *,
    op: str = "function",
    description: str | None = None,
    name: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def trace(
    func: Callable[P, R] | None = None,
    *,
    op: str = "function",
    description: str | None = None,
    name: str | None = None,
) -> Any:
    """Decorate a sync or async function: a child span while a span is current.

    The span's description is ``description`` (or ``sentry-sdk``'s ``name``), else the
    function's qualified name.
    """
    if description is None:
        description = name

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        name = description or getattr(fn, "__qualname__", None) or repr(fn)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                parent = CURRENT_SPAN.get()
                if parent is None:
                    return await fn(*args, **kwargs)
                with parent.start_child(op, name):
                    return await fn(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            parent = CURRENT_SPAN.get()
            if parent is None:
                return fn(*args, **kwargs)
            with parent.start_child(op, name):
                return fn(*args, **kwargs)

        return wrapper

    if func is not None:
        return decorate(func)
    return decorate


def is_coroutine_callable(fn: Any) -> bool:
    """A coroutine function, a partial of one, or an object whose ``__call__`` is one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or (
        not inspect.isroutine(fn)
        and callable(fn)
        and inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
    )


def wrap_context(fn: Callable[P, R]) -> Callable[P, R]:
    """Bind ``fn`` to a copy of the current context (for threads, executors, callbacks).

    A coroutine function (or an object with an async ``__call__``) gives a coroutine
    function (``BackgroundTask``, ``run_coroutine_threadsafe``): while its coroutine runs,
    every context variable has its value from the time of wrapping, and gets back the
    caller's afterwards. A generator function (sync or async) gives one whose every step
    runs so (its body runs only when iterated, wherever that is).
    """
    ctx = copy_context()
    kind = _generator_kind(fn)
    if kind == "sync":
        return _bound_generator(fn, ctx)
    if kind == "async":
        values = list(ctx.items())
        for var in (CURRENT_SPAN, PROPAGATION_CONTEXT):
            if var not in ctx:  # ours, set by each step (and reset), even when unset here
                values.append((var, None))
        return _bound_async_generator(fn, values)
    if is_coroutine_callable(fn):
        values = list(ctx.items())

        @functools.wraps(fn)
        async def bound_async(*args: Any, **kwargs: Any) -> Any:
            tokens = [var.set(value) for var, value in values]
            try:
                return await fn(*args, **kwargs)  # type: ignore[misc]
            finally:
                for (var, _), token in zip(reversed(values), reversed(tokens), strict=True):
                    var.reset(token)

        return bound_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def bound(*args: P.args, **kwargs: P.kwargs) -> R:
        return ctx.copy().run(fn, *args, **kwargs)

    return bound


def _generator_kind(fn: Any) -> str | None:
    """ "sync" / "async" for a (partial of a) generator function, else None."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isgeneratorfunction(fn):
        return "sync"
    if inspect.isasyncgenfunction(fn):
        return "async"
    return None


def _bound_generator(fn: Callable[..., Any], ctx: Context) -> Callable[..., Any]:
    """``wrap_context`` of a generator function: each step runs in one copy of ``ctx``."""

    @functools.wraps(fn)
    def bound_generator(*args: Any, **kwargs: Any) -> Any:
        run = ctx.copy().run
        gen = run(fn, *args, **kwargs)
        try:
            item = run(next, gen)
        except StopIteration as stop:
            return stop.value
        while True:
            try:
                sent = yield item
            except GeneratorExit:
                run(gen.close)
                raise
            except BaseException as exc:  # thrown in: into the generator, in the context
                step: Callable[[], Any] = functools.partial(gen.throw, exc)
            else:
                step = functools.partial(gen.send, sent)
            try:
                item = run(step)
            except StopIteration as stop:
                return stop.value

    return bound_generator


def _bound_async_generator(fn: Callable[..., Any], values: list[Any]) -> Callable[..., Any]:
    """``wrap_context`` of an async generator function: its first step runs with the
    context variables' values from the time of wrapping (as ``bound_async``), each next
    one with the values the step before left (a span it entered stays current in it);
    the iterating code gets its own back after each step."""

    @functools.wraps(fn)
    async def bound_async_generator(*args: Any, **kwargs: Any) -> Any:
        agen = fn(*args, **kwargs)
        state = values

        async def step(run: Callable[[], Any]) -> Any:
            nonlocal state
            tokens = [var.set(value) for var, value in state]
            try:
                return await run()
            finally:
                left = list(copy_context().items())
                for (var, _), token in zip(reversed(state), reversed(tokens), strict=True):
                    var.reset(token)
                state = left

        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:
                try:
                    if thrown is not None:
                        exc, thrown = thrown, None
                        item = await step(functools.partial(agen.athrow, exc))
                    else:
                        item = await step(functools.partial(agen.asend, sent))
                except StopAsyncIteration:
                    return
                try:
                    sent = yield item
                except GeneratorExit:
                    raise
                except BaseException as exc:
                    thrown = exc
        finally:
            await step(agen.aclose)

    return bound_async_generator
