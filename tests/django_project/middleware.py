"""An app's own middleware that answers view exceptions itself (``process_exception``)."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse


class AnswersErrors:
    """Turns a view's exception (but Http404) into a JSON answer: 500, or 404 with
    ``?soft``."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)  # type: ignore[no-any-return]

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, Http404):
            return None  # Django's own 404
        status = 404 if "soft" in request.GET else 500
        return JsonResponse({"error": type(exception).__name__}, status=status)


class Maintenance:
    """Answers 503 (no exception) for ``?maint``, whatever the view did."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response: HttpResponse = self.get_response(request)
        if "maint" in request.GET:
            return HttpResponse("maintenance", status=503)
        return response
