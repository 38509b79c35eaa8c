"""Views for the integration tests."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.views import View
from django.views.decorators.http import require_GET

import sentry_tracing_mw as stm

from .models import Item


def ok(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return HttpResponse("ok")


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("index")


class UserView(View):
    def get(self, request: HttpRequest, pk: int) -> HttpResponse:
        return HttpResponse(f"user {pk}")


@require_GET
def only_get(request: HttpRequest) -> HttpResponse:
    return HttpResponse("get only")


def error(request: HttpRequest) -> HttpResponse:
    raise ValueError("boom from a view")


def exit_view(request: HttpRequest) -> HttpResponse:
    """Raises what a worker timeout or Ctrl-C raises in a request: SystemExit(?code=),
    or KeyboardInterrupt for ?code=kbd."""
    code = request.GET.get("code", "1")
    if code == "kbd":
        raise KeyboardInterrupt
    raise SystemExit(None if code == "none" else int(code))


def raise404(request: HttpRequest, pk: int) -> HttpResponse:
    raise Http404("no such thing")


def body_on_204(request: HttpRequest) -> HttpResponse:
    """A response no server can send as it is (a body on a 204): sending it raises."""
    return HttpResponse(b"oops", status=204)


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def body() -> Iterator[bytes]:
        for i in range(3):
            time.sleep(0.1)
            yield f"chunk{i}\n".encode()

    return StreamingHttpResponse(body())


def stream_orm(request: HttpRequest) -> StreamingHttpResponse:
    def body() -> Iterator[bytes]:
        yield b"start\n"
        yield f"{Item.objects.count()}\n".encode()

    return StreamingHttpResponse(body())


async def astream(request: HttpRequest) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(3):
            await asyncio.sleep(0.1)
            yield f"chunk{i}\n".encode()

    return StreamingHttpResponse(body())


async def astream_long(request: HttpRequest) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(100):
            await asyncio.sleep(0.05)
            yield f"chunk{i}\n".encode()

    return StreamingHttpResponse(body())


async def async_slow(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(1)
    return HttpResponse(b"late")


def sync_slow(request: HttpRequest) -> HttpResponse:
    time.sleep(2.5)
    return HttpResponse(b"late")


def stream_error(request: HttpRequest) -> StreamingHttpResponse:
    def body() -> Iterator[bytes]:
        yield b"start\n"
        raise RuntimeError("boom mid-stream")

    return StreamingHttpResponse(body())


async def astream_error(request: HttpRequest) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"start\n"
        raise RuntimeError("boom mid-async-stream")

    return StreamingHttpResponse(body())


class _SlowFile(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        time.sleep(0.1)
        return super().read(size)


def file_response(request: HttpRequest) -> FileResponse:
    response = FileResponse(_SlowFile(b"x" * 30), filename="f.bin")
    response.block_size = 10
    return response


class _NoTell(io.RawIOBase):
    """A readable stream that cannot tell its position (a pipe, a subprocess's stdout)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n

    def tell(self) -> int:
        raise OSError(29, "Illegal seek")


def no_tell_file(request: HttpRequest) -> FileResponse:
    return FileResponse(_NoTell(b"y" * 100), filename="pipe.bin")


def big_file(request: HttpRequest) -> FileResponse:
    """16 MiB, more than any socket buffer holds: a client that stops reading is seen."""
    return FileResponse(io.BytesIO(bytes(16 << 20)), filename="big.bin")


def orm(request: HttpRequest) -> HttpResponse:
    Item.objects.create(name="sync")
    count = Item.objects.filter(name="sync").count()
    return HttpResponse(str(count))


async def aorm(request: HttpRequest) -> HttpResponse:
    await Item.objects.acreate(name="async")
    count = await Item.objects.filter(name="async").acount()
    return HttpResponse(str(count))


async def aok(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return HttpResponse("async ok")


async def aerror(request: HttpRequest) -> HttpResponse:
    raise KeyError("boom from an async view")


def template(request: HttpRequest) -> HttpResponse:
    return render(request, "page.html", {"title": "hello"})


def meta_tag(request: HttpRequest) -> HttpResponse:
    return render(request, "meta.html")


def meta_error(request: HttpRequest) -> HttpResponse:
    """Reads the trace (what the meta tags do), then fails."""
    import sentry_tracing_mw as stm

    raise ValueError(f"boom after {stm.trace_meta_tags()}")


async def ameta_error(request: HttpRequest) -> HttpResponse:
    return meta_error(request)


def trace_header(request: HttpRequest) -> HttpResponse:
    """Exposes the request's trace context in a response header."""
    import sentry_tracing_mw as stm

    response = HttpResponse("")
    response["X-Sentry-Trace"] = stm.get_trace_headers()["sentry-trace"]
    return response


def stream_trace(request: HttpRequest) -> StreamingHttpResponse:
    """A streamed body reporting the trace it runs in, chunk by chunk."""

    def body() -> Iterator[bytes]:
        for _ in range(2):
            yield (stm.get_trace_headers().get("sentry-trace", "none") + "\n").encode()

    return StreamingHttpResponse(body())


class _User:
    """A logged-in user as ``django.contrib.auth`` gives one (the fields events read)."""

    is_authenticated = True
    pk = 7
    email = "alice@example.com"

    def get_username(self) -> str:
        return "alice"


class LoggedInMiddleware:
    """Sets ``request.user`` lazily, as ``AuthenticationMiddleware`` does."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from django.utils.functional import SimpleLazyObject

        request.user = SimpleLazyObject(_User)  # type: ignore[assignment]
        return self.get_response(request)  # type: ignore[no-any-return]


def whoami(request: HttpRequest) -> HttpResponse:
    if request.GET.get("fail"):
        assert request.user.is_authenticated
        raise ValueError("logged in and failing")
    if request.GET.get("read"):
        return HttpResponse(request.user.get_username())  # type: ignore[union-attr]
    return HttpResponse("user not read")


def _contact_formset() -> tuple[Any, Any]:
    from django import forms

    class Contact(forms.Form):
        name = forms.CharField()
        age = forms.IntegerField()
        kind = forms.ChoiceField(choices=[("a", "A"), ("b", "B")])

    class Custom(forms.Form):
        """A form with the app's own template, found by the form renderer's engine."""

        template_name = "form_custom.html"
        note = forms.CharField()

    return forms.formset_factory(Contact, extra=5)(), Custom()


def forms_page(request: HttpRequest) -> HttpResponse:
    """A page of a formset and a form: hundreds of form renderer templates."""
    formset, custom = _contact_formset()
    response = render(request, "forms_page.html", {"formset": formset, "custom": custom})
    Item.objects.count()  # the view's own query, after the forms
    return response
