"""sentry-tracing-mw."""
