"""Django REST framework and Django Ninja views (mounted under ``rest/`` and ``ninja/``).

Their exception handlers answer a view's exception inside the view: the cases where one
answers with a 5xx (an error to capture) and with a 4xx (none).
"""

from __future__ import annotations

from typing import Any

from django.urls import include, path
from ninja import NinjaAPI, Router
from ninja.errors import HttpError
from rest_framework import exceptions, routers, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.response import Response


class ItemViewSet(viewsets.ViewSet):
    def list(self, request: Any) -> Response:
        return Response([{"id": 1}])

    def retrieve(self, request: Any, pk: str, format: str | None = None) -> Response:
        return Response({"id": pk})

    @action(detail=True, methods=["post"])
    def publish(self, request: Any, pk: str) -> Response:
        return Response({"published": pk})

    @action(detail=False, url_path="api-error")
    def api_error(self, request: Any) -> Response:
        raise exceptions.APIException("the pricing service is down")  # status 500

    @action(detail=False, url_path="invalid")
    def invalid(self, request: Any) -> Response:
        raise exceptions.ValidationError({"qty": ["must be positive"]})

    @action(detail=False, url_path="crash")
    def crash(self, request: Any) -> Response:
        raise RuntimeError("unhandled in a viewset")  # DRF re-raises: Django's 500


def _everything_is_500(exc: Exception, context: Any) -> Response:
    """A project's ``EXCEPTION_HANDLER`` that answers every exception (a common pattern)."""
    return Response({"detail": "internal error"}, status=500)


class WrappedViewSet(viewsets.ViewSet):
    def get_exception_handler(self) -> Any:
        return _everything_is_500

    def list(self, request: Any) -> Response:
        raise RuntimeError("answered by the project's exception handler")


@api_view(["GET"])
def unavailable(request: Any) -> Response:
    exc = exceptions.APIException("maintenance")
    exc.status_code = 503
    raise exc


@api_view(["GET", "HEAD"])
def outer_raises(request: Any) -> Response:
    """Calls another view, whose APIException DRF answers with a 500, then fails itself:
    its own exception is the request's error, not the inner one."""
    inner = ItemViewSet.as_view({"get": "api_error"})(request._request)
    raise RuntimeError(f"the inner view answered {inner.status_code}")


@api_view(["GET", "HEAD"])
def outer_recovers(request: Any) -> Response:
    """Calls another view, whose APIException DRF answers with a 500, and recovers: the
    request answers 200, no error."""
    inner = ItemViewSet.as_view({"get": "api_error"})(request._request)
    return Response({"fallback": inner.status_code})


router = routers.DefaultRouter()
router.register("items", ItemViewSet, basename="item")
router.register("wrapped", WrappedViewSet, basename="wrapped")

api = NinjaAPI(urls_namespace="ninja-tests")
things = Router()


class Teapot(Exception):
    pass


@api.exception_handler(Teapot)
def _teapot_is_500(request: Any, exc: Teapot) -> Any:
    return api.create_response(request, {"detail": "teapot"}, status=500)


@things.get("/{int:thing_id}")
def thing(request: Any, thing_id: int) -> dict[str, int]:
    return {"id": thing_id}


@api.get("/down")
def down(request: Any) -> None:
    raise HttpError(503, "down for maintenance")


@api.get("/gone")
def gone(request: Any) -> None:
    raise HttpError(404, "no such thing")


@api.get("/teapot")
def teapot(request: Any) -> None:
    raise Teapot("answered by the app's handler")


@api.get("/crash")
def crash(request: Any) -> None:
    raise RuntimeError("unhandled in ninja")  # Ninja re-raises (DEBUG off): Django's 500


api.add_router("/things", things)

urlpatterns = [
    path("rest/", include(router.urls)),
    path("rest/unavailable/", unavailable),
    path("rest/outer-raises/", outer_raises),
    path("rest/outer-recovers/", outer_recovers),
    path("ninja/", api.urls),
]
