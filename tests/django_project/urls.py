"""URLconf covering the naming table: path, re_path, include (nested), i18n, CBVs."""

from __future__ import annotations

from django.conf.urls.i18n import i18n_patterns
from django.urls import include, path, re_path

from . import views

items = [
    path("items/<slug:slug>/", views.ok),
    re_path(r"^legacy/(?P<code>[A-Z]{3})/$", views.ok),
]

deep = [
    path("leaf/<int:leaf_id>/", views.ok),
]

urlpatterns = [
    path("", views.index),
    path("users/<int:pk>/", views.ok),
    path("users/<int:pk>/posts/<uuid:post>/", views.ok),
    re_path(r"^articles/(?P<year>[0-9]{4})/$", views.ok),
    re_path(r"^articles/(?P<year>[0-9]{4})/(?P<month>[0-9]{2})/$", views.ok),
    re_path(r"^unnamed/([0-9]+)/$", views.ok),
    re_path(r"^optional/(?:page-(?P<page>[0-9]+)/)?$", views.ok),
    re_path(r"^slash/?$", views.ok),
    path("api/v1/", include(items)),
    re_path(r"^reapi/(?P<version>v[0-9])/", include(items)),
    path("outer/<int:org>/", include([path("inner/", include(deep))])),
    path("cbv/<int:pk>/", views.UserView.as_view()),
    path("only-get/", views.only_get),
    path("error/", views.error),
    path("exit/", views.exit_view),
    path("whoami/", views.whoami),
    path("aerror/", views.aerror),
    path("missing/<int:pk>/", views.raise404),
    path("stream/", views.stream),
    path("body-on-204/", views.body_on_204),
    path("stream-orm/", views.stream_orm),
    path("astream/", views.astream),
    path("astream-long/", views.astream_long),
    path("sync-slow/", views.sync_slow),
    path("async-slow/", views.async_slow),
    path("stream-error/", views.stream_error),
    path("astream-error/", views.astream_error),
    path("stream-trace/", views.stream_trace),
    path("file/", views.file_response),
    path("big-file/", views.big_file),
    path("no-tell-file/", views.no_tell_file),
    path("orm/", views.orm),
    path("aorm/", views.aorm),
    path("async/<int:pk>/", views.aok),
    path("template/", views.template),
    path("meta/", views.meta_tag),
    path("meta-error/", views.meta_error),
    path("ameta-error/", views.ameta_error),
    path("forms/", views.forms_page),
    path("health/", views.ok),
    path("trace-header/", views.trace_header),
    # path() text is literal, whatever regex syntax it holds
    path("c++/<int:pk>/", views.ok),
    path("wiki/(main)/<slug:s>/", views.ok),
    path("price$/", views.ok),
    path("opt[1]/", views.ok),
    path("star*/", views.ok),
    re_path(r"^mixed/(?P<v>[0-9]+)/", include([path("a+b/<int:n>/", views.ok)])),
    re_path(r"^twice/(?P<a>[0-9]+)/(?P=a)/$", views.ok),
    re_path(r"^hex/[a-f0-9]{8}/$", views.ok),
    re_path(r"^doc/(?P<pk>[0-9]+)/(?:edit|view)/$", views.ok),
]

urlpatterns += i18n_patterns(path("shop/<slug:slug>/", views.ok))

try:  # Django REST framework and Django Ninja (dev extras)
    from . import api_views
except ImportError:  # a bare environment: their tests skip
    pass
else:
    urlpatterns += api_views.urlpatterns
