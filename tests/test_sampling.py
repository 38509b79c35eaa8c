"""Head-based sampling (protocol §12) and DSC lifecycle (§11, §13)."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

import sentry_tracing_mw as stm
from sentry_tracing_mw._client import get_client
from sentry_tracing_mw._propagation import extract
from sentry_tracing_mw._sampling import TokenBucket

TRACE = "771a43a4192642f0b136d5159a501700"
SPAN = "a0cfbde2bdff3adc"


def incoming(flag: str = "", **dsc: str) -> dict[str, str]:
    headers = {"sentry-trace": f"{TRACE}-{SPAN}{flag}"}
    if dsc:
        headers["baggage"] = ",".join(f"sentry-{k}={v}" for k, v in dsc.items())
    return headers


def init(**kw: Any) -> None:
    kw.setdefault("instrument_http_clients", False)
    stm.init(dsn="https://49d0f7386ad645858ae85020e393bef3@o42.ingest.sentry.io/7", **kw)


def test_rate_decides_against_sample_rand() -> None:
    init(traces_sample_rate=0.5)
    decisions = []
    for _ in range(400):
        tx = stm.start_transaction("t")
        ctx = tx.propagation_context
        assert tx.sampled is (ctx.sample_rand < 0.5)
        decisions.append(tx.sampled)
    assert 120 < sum(decisions) < 280


def test_incoming_sample_rand_drives_the_decision() -> None:
    init(traces_sample_rate=0.5)
    low = stm.start_transaction("t", headers=incoming(sample_rand="0.100000", sample_rate="0.5"))
    high = stm.start_transaction("t", headers=incoming(sample_rand="0.900000", sample_rate="0.5"))
    # No sampled flag -> deferred parent -> our rate with their sample_rand.
    assert low.sampled is True and high.sampled is False
    assert low.trace_id == TRACE and low.parent_span_id == SPAN


@pytest.mark.parametrize("flag", ["-1", "-0"])
def test_parent_decision_is_inherited_whatever_our_rate(flag: str) -> None:
    for rate in (0.0, 1.0):
        init(traces_sample_rate=rate)
        tx = stm.start_transaction("t", headers=incoming(flag))
        assert tx.sampled is (flag == "-1")
        assert stm.get_trace_headers is not None
        assert tx.propagation_context.headers(tx.span_id)["sentry-trace"].endswith(flag)


def test_sampler_takes_precedence_and_gets_sentry_sdk_keys() -> None:
    seen: list[dict[str, Any]] = []

    def sampler(ctx: stm.SamplingContext) -> float:
        seen.append(dict(ctx))
        return 0.0 if ctx["transaction_context"]["name"] == "drop" else 1.0

    init(traces_sample_rate=0.0, traces_sampler=sampler)
    kept = stm.start_transaction(
        "keep",
        op="task",
        headers=incoming("-0", sample_rate="0.25", sample_rand="0.5"),
        custom_sampling_context={"tenant": "acme"},
    )
    dropped = stm.start_transaction("drop", headers=incoming("-1"))
    assert kept.sampled is True and dropped.sampled is False
    assert seen[0]["transaction_context"] == {"name": "keep", "op": "task", "source": "custom"}
    assert seen[0]["parent_sampled"] is False
    assert seen[0]["parent_sample_rate"] == 0.25
    assert seen[0]["tenant"] == "acme"
    # A local override never edits the frozen upstream DSC; the flag carries our decision.
    headers = kept.propagation_context.headers(kept.span_id)
    assert headers["sentry-trace"].endswith("-1")
    assert "sentry-sample_rate=0.25" in headers["baggage"]


@pytest.mark.parametrize("result", [True, False, 1, 0])
def test_boolean_sampler_results_map_to_rates(result: Any) -> None:
    init(traces_sampler=lambda ctx: result)
    tx = stm.start_transaction("b")
    assert tx.sampled is bool(result)
    assert tx.propagation_context.sample_rate == float(bool(result))


@pytest.mark.parametrize(
    ("result", "rate"),
    [(Decimal("1"), 1.0), (Fraction(1, 1), 1.0), (Decimal("0"), 0.0), (Fraction(0), 0.0)],
)
def test_decimal_and_fraction_sampler_results_are_rates(result: Any, rate: float) -> None:
    # sentry-sdk takes any real number (and Decimal): such samplers must keep sampling
    init(traces_sampler=lambda ctx: result)
    tx = stm.start_transaction("d")
    assert tx.sampled is (rate == 1.0)
    assert tx.propagation_context.sample_rate == rate


@pytest.mark.parametrize(
    "garbage",
    [
        "0.5",
        None,
        math.nan,
        -0.1,
        1.5,
        object(),
        Decimal("NaN"),
        Decimal("2"),
        pytest.param(10**400, id="int-too-large-for-a-float"),
    ],
)
def test_garbage_sampler_results_mean_unsampled(garbage: Any) -> None:
    init(traces_sampler=lambda ctx: garbage)
    assert stm.start_transaction("g").sampled is False


def test_raising_sampler_means_unsampled_never_an_exception() -> None:
    def sampler(ctx: Any) -> float:
        raise RuntimeError("bad sampler")

    init(traces_sampler=sampler)
    assert stm.start_transaction("r").sampled is False


def test_backfill_reproduces_the_recorded_decision() -> None:
    init(traces_sample_rate=1.0)
    for _ in range(200):
        yes = stm.start_transaction("t", headers=incoming("-1", sample_rate="0.3", trace_id=TRACE))
        no = stm.start_transaction("t", headers=incoming("-0", sample_rate="0.3", trace_id=TRACE))
        assert yes.propagation_context.sample_rand < 0.3
        assert no.propagation_context.sample_rand >= 0.3
        dsc = no.propagation_context.dsc()
        assert dsc["sample_rate"] == "0.3" and len(dsc["sample_rand"]) == 8


@pytest.mark.parametrize(("flag", "rate"), [("-1", "0"), ("-0", "1"), ("-0", "1.0")])
def test_no_sample_rand_is_backfilled_when_none_reproduces_the_decision(
    flag: str, rate: str
) -> None:
    # protocol §12.2: sampled at rate 0 (or not sampled at rate 1) leaves no interval, and
    # sentry-sdk then leaves sample_rand unset; a made-up 0.000000 / 0.999999 would make
    # the forwarded DSC contradict the decision (§10.2 invariant).
    init(traces_sample_rate=1.0)
    tx = stm.start_transaction("t", headers=incoming(flag, sample_rate=rate, trace_id=TRACE))
    assert tx.sampled is (flag == "-1")
    dsc = tx.propagation_context.dsc()
    assert "sample_rand" not in dsc and dsc["sample_rate"] == rate
    with tx:
        assert "sentry-sample_rand" not in stm.get_trace_headers()["baggage"]
    assert 0.0 <= tx.propagation_context.sample_rand < 1.0  # still one to decide with


def _sdk_generate_sample_rand() -> Any:
    """sentry-sdk's own backfill (a test peer): the oracle for our values, when present."""
    from sentry_sdk import tracing_utils

    found = getattr(tracing_utils, "_generate_sample_rand", None)
    if found is None:  # pragma: no cover - a sentry-sdk without it
        pytest.skip("this sentry-sdk has no _generate_sample_rand")
    return found


@pytest.mark.parametrize(
    ("flag", "dsc", "interval"),
    [
        ("-1", {"sample_rate": "0.3"}, (0.0, 0.3)),  # reproduce "sampled" at 0.3
        ("-0", {"sample_rate": "0.3"}, (0.3, 1.0)),  # reproduce "not sampled" at 0.3
        ("", {"environment": "up"}, (0.0, 1.0)),  # deferred (a TwP upstream)
        ("-1", {}, (0.0, 1.0)),  # sentry-trace alone (an old SDK)
    ],
)
def test_backfilled_sample_rand_comes_from_the_trace_id_like_sentry_sdk(
    flag: str, dsc: dict[str, str], interval: tuple[float, float]
) -> None:
    # protocol §12.2: every service continuing a trace that came without a sample_rand
    # derives the same one from the trace id, so replicas and sentry-sdk siblings agree.
    init(traces_sample_rate=0.5)
    generate = _sdk_generate_sample_rand()
    for trace_id in (TRACE, "0af7651916cd43dd8448eb211c80319c", "f" * 32):
        headers = incoming(flag, **dsc)
        headers["sentry-trace"] = headers["sentry-trace"].replace(TRACE, trace_id)
        rands = {
            stm.start_transaction("t", headers=headers).propagation_context.sample_rand
            for _ in range(5)
        }
        assert rands == {generate(trace_id, interval=interval)}
        (rand,) = rands
        assert interval[0] <= rand < interval[1]


def test_identical_deferred_requests_get_the_same_decision() -> None:
    # An upstream DSC whose sample_rand contradicts its own decision cannot be kept (the
    # envelope's DSC would contradict itself); the one derived instead is the same for
    # every copy of the request, so the decision is too.
    init(traces_sample_rate=0.5)
    headers = incoming(sample_rate="0.3", sample_rand="0.900000", sampled="true")
    decisions = {stm.start_transaction("t", headers=headers).sampled for _ in range(8)}
    assert len(decisions) == 1


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("0.12345678912345", "0.12345678912345"),  # JavaScript: full precision
        ("0.5", "0.5"),  # Java
        ("0.250000", "0.250000"),
        ("1e-3", "0.001000"),  # valid but exotic forms get the envelope's 6 decimals
        (".5", "0.500000"),
        ("0", "0.000000"),
    ],
)
def test_incoming_sample_rand_is_frozen_as_received(sent: str, kept: str) -> None:
    init(traces_sample_rate=1.0)
    tx = stm.start_transaction(
        "t", headers=incoming("-1", sample_rate="0.9", sample_rand=sent, sampled="true")
    )
    assert tx.propagation_context.dsc()["sample_rand"] == kept
    assert f"sentry-sample_rand={kept}" in tx.propagation_context.headers(tx.span_id)["baggage"]


def test_head_dsc_is_frozen_on_first_use() -> None:
    init(traces_sample_rate=1.0, release="app@1.2.3", environment="staging")
    tx = stm.start_transaction("/users/{id}", source="route")
    dsc = tx.propagation_context.dsc()
    assert dsc == {
        "trace_id": tx.trace_id,
        "public_key": "49d0f7386ad645858ae85020e393bef3",
        "sample_rate": "1.0",
        "sample_rand": dsc["sample_rand"],
        "sampled": "true",
        "release": "app@1.2.3",
        "environment": "staging",
        "org_id": "42",
        "transaction": "/users/{id}",
    }
    assert all(isinstance(v, str) for v in dsc.values())
    tx.set_name("/renamed")
    assert tx.propagation_context.dsc()["transaction"] == "/users/{id}"


def test_url_source_names_stay_out_of_the_dsc() -> None:
    init(traces_sample_rate=1.0)
    tx = stm.start_transaction("/users/42", source="url")
    assert "transaction" not in tx.propagation_context.dsc()


def test_incoming_dsc_is_taken_as_received() -> None:
    init(traces_sample_rate=1.0, release="mine")
    tx = stm.start_transaction(
        "t",
        headers=incoming(
            "-1",
            trace_id=TRACE,
            public_key="theirs",
            sample_rate="0.5",
            sample_rand="0.250000",
            sampled="true",
            release="app%401.2.3",
            custom="kept",
        ),
    )
    assert tx.propagation_context.dsc() == {
        "trace_id": TRACE,
        "public_key": "theirs",
        "sample_rate": "0.5",
        "sample_rand": "0.250000",
        "sampled": "true",
        "release": "app@1.2.3",
        "custom": "kept",
    }


def test_incoming_trace_without_baggage_makes_us_the_dsc_head() -> None:
    init(traces_sample_rate=0.0, release="r1")
    tx = stm.start_transaction("t", headers=incoming("-1"))
    dsc = tx.propagation_context.dsc()
    assert dsc["trace_id"] == TRACE and dsc["sampled"] == "true" and dsc["release"] == "r1"
    assert float(dsc["sample_rand"]) < float(dsc["sample_rate"])
    tx_no = stm.start_transaction("t", headers=incoming("-0"))
    dsc_no = tx_no.propagation_context.dsc()
    assert dsc_no["sampled"] == "false"
    assert float(dsc_no["sample_rand"]) >= float(dsc_no["sample_rate"])


def test_tracing_without_performance_is_deferred() -> None:
    init()  # no rate, no sampler
    tx = stm.start_transaction("twp")
    assert tx.sampled is False
    headers = tx.propagation_context.headers(tx.span_id)
    assert headers["sentry-trace"] == f"{tx.trace_id}-{tx.span_id}"
    assert "sentry-sampled" not in headers["baggage"]
    assert "sentry-sample_rate" not in headers["baggage"]
    assert "sentry-sample_rand=" in headers["baggage"]
    assert headers["traceparent"].endswith("-02")
    # An incoming decision is still carried on, unchanged.
    cont = stm.start_transaction("twp", headers=incoming("-1"))
    assert cont.sampled is False
    assert cont.propagation_context.headers(cont.span_id)["sentry-trace"].endswith("-1")


def test_rate_zero_is_not_deferred() -> None:
    init(traces_sample_rate=0.0)
    tx = stm.start_transaction("zero")
    assert tx.propagation_context.headers(tx.span_id)["sentry-trace"].endswith("-0")


@pytest.mark.parametrize(
    ("theirs", "ours", "strict", "continued"),
    [
        ("1", "1", False, True),
        (None, "1", False, True),
        ("1", None, False, True),
        (None, None, False, True),
        ("1", "2", False, False),
        ("1", "1", True, True),
        (None, "1", True, False),
        ("1", None, True, False),
        (None, None, True, True),
        ("1", "2", True, False),
    ],
)
@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_strict_trace_continuation_matrix(
    theirs: str | None, ours: str | None, strict: bool, continued: bool, lazy: bool
) -> None:
    kw: dict[str, Any] = {"strict_trace_continuation": strict, "traces_sample_rate": 1.0}
    dsn = f"https://key@o{ours}.ingest.sentry.io/7" if ours else "https://key@example.com/7"
    stm.init(dsn=dsn, instrument_http_clients=False, **kw)
    dsc = {"trace_id": TRACE, "public_key": "k"}
    if theirs:
        dsc["org_id"] = theirs
    if lazy:  # as the middlewares do: the baggage is parsed only when something needs it
        client = get_client()
        found = extract(incoming("-1", **dsc), lazy=True)
        assert found is not None and found.dsc is None and found.baggage
        tx = client.start_transaction("t", ctx=client.continue_trace(found))
    else:
        tx = stm.start_transaction("t", headers=incoming("-1", **dsc))
    assert (tx.trace_id == TRACE) is continued
    if not continued:
        assert tx.parent_span_id is None
        assert TRACE not in str(tx.propagation_context.dsc())


def test_org_id_option_overrides_dsn() -> None:
    stm.init(dsn="https://key@o1.ingest.sentry.io/7", org_id=99, instrument_http_clients=False)
    assert get_client().options.org_id == "99"


def test_inherited_sampling_cap_limits_forced_sampling() -> None:
    init(traces_sample_rate=0.0, max_inherited_sampled_per_second=5)
    sampled = sum(stm.start_transaction("f", headers=incoming("-1")).sampled for _ in range(50))
    assert sampled == 5
    # Our own head decisions are not capped.
    init(traces_sample_rate=1.0, max_inherited_sampled_per_second=0)
    assert all(stm.start_transaction("h").sampled for _ in range(20))


def test_the_inherited_cap_never_overrides_an_explicit_or_sampler_decision() -> None:
    """The cap is on decisions inherited from an upstream ``-1`` (protocol §12.1: an
    explicit ``sampled=`` comes first; docs/operations.md: a sampler's decision is this
    service's own)."""
    init(traces_sample_rate=0.0, max_inherited_sampled_per_second=0)
    assert stm.continue_trace(incoming("-1"), name="job", sampled=True).sampled is True
    assert stm.start_transaction("job", headers=incoming("-1")).sampled is False  # capped
    init(traces_sampler=lambda ctx: 1.0, max_inherited_sampled_per_second=0)
    assert all(stm.start_transaction("s", headers=incoming("-1")).sampled for _ in range(5))
    init(traces_sampler=lambda ctx: ctx["parent_sample_rate"], max_inherited_sampled_per_second=0)
    tx = stm.start_transaction("p", headers=incoming("-1", sample_rate="1.0", sample_rand="0.5"))
    assert tx.sampled is True


def test_without_tracing_an_upstream_minus_zero_is_no_sampled_away_transaction() -> None:
    """Tracing without performance (no rate, no sampler): no transaction is sampled, so
    none is client-reported as dropped by sampling (as sentry-sdk); the ``-0`` is still
    propagated, and no cap turns an upstream ``-1`` into ``-0`` either."""
    init(max_inherited_sampled_per_second=0)
    for flag in ("-0", "-1", ""):
        with stm.start_transaction("t", headers=incoming(flag)) as tx:
            assert tx.sampled is False or flag == "-1"
            sent = tx.propagation_context.headers(tx.span_id)["sentry-trace"]
            assert sent.endswith(flag) if flag else sent.count("-") == 1
    assert get_client().reports.snapshot() == {}
    init(traces_sample_rate=1.0)  # with tracing on, the same -0 is counted
    with stm.start_transaction("t", headers=incoming("-0")):
        pass
    assert get_client().reports.snapshot() == {
        ("sample_rate", "transaction"): 1,
        ("sample_rate", "span"): 1,
    }


def test_capped_decision_keeps_the_frozen_dsc_and_propagates_minus_zero() -> None:
    init(traces_sample_rate=1.0, max_inherited_sampled_per_second=0)
    tx = stm.start_transaction(
        "f", headers=incoming("-1", trace_id=TRACE, sample_rate="1.0", sampled="true")
    )
    assert tx.sampled is False
    headers = tx.propagation_context.headers(tx.span_id)
    assert headers["sentry-trace"].endswith("-0")
    assert "sentry-sampled=true" in headers["baggage"]


def test_token_bucket_refills(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    import sentry_tracing_mw._sampling as sampling

    monkeypatch.setattr(sampling.time, "monotonic", lambda: now[0])
    bucket = TokenBucket(2.0)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] += 0.5
    assert bucket.take() is True
    assert bucket.take() is False


def test_trust_incoming_traces_options() -> None:
    init(traces_sample_rate=1.0, trust_incoming_traces=["10.0.0.0/8", "::1/128"])
    client = get_client()
    assert client.trusts("10.1.2.3") and client.trusts("::1")
    assert not client.trusts("192.168.0.1") and not client.trusts(None)
    assert not client.trusts("not an ip")
    init(trust_incoming_traces=lambda request: request == "ok")
    assert get_client().trusts(None, "ok") and not get_client().trusts(None, "no")
    init(trust_incoming_traces=False)
    assert not get_client().trusts("127.0.0.1")


@pytest.mark.parametrize("peer", ["::ffff:127.0.0.1", "127.0.0.1"])
def test_trusted_ipv4_networks_match_ipv4_mapped_peers(peer: str) -> None:
    # A dual-stack server (bound to ::) reports IPv4 clients as ::ffff:a.b.c.d.
    import asyncio

    from sentry_tracing_mw.integrations.asgi import TracingMiddleware as AsgiMiddleware
    from sentry_tracing_mw.integrations.wsgi import TracingMiddleware as WsgiMiddleware

    stm.init(
        traces_sample_rate=1.0,
        trust_incoming_traces=["127.0.0.0/8"],
        instrument_http_clients=False,
    )
    assert get_client().trusts(peer) and not get_client().trusts("::ffff:10.0.0.1")
    seen: list[str | None] = []

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        span = stm.get_current_span()
        seen.append(span.trace_id if span else None)
        start_response("200 OK", [])
        return [b"ok"]

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "x",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "REMOTE_ADDR": peer,
        "HTTP_SENTRY_TRACE": f"{TRACE}-{SPAN}-1",
    }
    list(WsgiMiddleware(wsgi_app)(environ, lambda *a: None))

    async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        span = stm.get_current_span()
        seen.append(span.trace_id if span else None)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"sentry-trace", f"{TRACE}-{SPAN}-1".encode())],
        "client": (peer, 50000),
        "server": ("x", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    asyncio.run(AsgiMiddleware(asgi_app)(scope, receive, send))
    assert seen == [TRACE, TRACE]


def test_decision_for_a_deferred_upstream_adds_the_rate_to_its_dsc() -> None:
    # The upstream traced without performance (no sampled flag, a DSC without rate or
    # decision): the DSC is taken as received, plus the rate this decision used, as
    # sentry-sdk adds it (Relay cannot extrapolate without one).
    init(traces_sample_rate=1.0)
    headers = incoming(
        trace_id=TRACE, public_key="49d0f7386ad645858ae85020e393bef3", release="js@1"
    )
    tx = stm.start_transaction("t", headers=headers)
    assert tx.sampled is True
    dsc = tx.propagation_context.dsc()
    assert dsc["sample_rate"] == "1.0" and dsc["release"] == "js@1"
    assert "sampled" not in dsc  # what the upstream sent is not edited
    with tx:
        baggage = stm.get_trace_headers()["baggage"]
    assert "sentry-sample_rate=1.0" in baggage.split(",")
    # A rate the upstream did send is never replaced.
    init(traces_sampler=lambda ctx: 0.25)
    tx = stm.start_transaction("t", headers=incoming("-1", trace_id=TRACE, sample_rate="0.5"))
    assert tx.propagation_context.dsc()["sample_rate"] == "0.5"


@pytest.mark.parametrize("recorded", ["true", "false"])
def test_a_clear_traceparent_flag_defers_to_the_decision_in_the_dsc(recorded: str) -> None:
    # An OpenTelemetry service between two Sentry ones forwards the head's baggage with
    # its own traceparent, sampled bit clear: the head's recorded decision still holds.
    init(traces_sample_rate=0.0 if recorded == "true" else 1.0)
    headers = {
        "traceparent": f"00-{TRACE}-{SPAN}-02",
        "baggage": f"sentry-trace_id={TRACE},sentry-sample_rate=0.5,sentry-sampled={recorded}",
    }
    tx = stm.start_transaction("t", headers=headers)
    assert tx.sampled is (recorded == "true")
    assert tx.trace_id == TRACE and tx.parent_span_id == SPAN
    # Without a recorded decision the clear flag stays a deferred one: our rate decides.
    headers["baggage"] = f"sentry-trace_id={TRACE},sentry-sample_rate=0.5"
    assert stm.start_transaction("t", headers=headers).sampled is (recorded != "true")


def test_a_flagless_sentry_trace_stays_deferred_whatever_its_baggage_records() -> None:
    # Only a traceparent (an OpenTelemetry hop) takes the decision its Sentry baggage
    # records; a sentry-trace without a flag is deferred to this service (protocol §8).
    init(traces_sample_rate=1.0)
    headers = incoming(trace_id=TRACE, sampled="false", sample_rand="0.500000")
    tx = stm.start_transaction("t", headers=headers)
    assert tx.sampled is True
    # The recorded decision is kept, and no rate is added that would contradict it.
    assert "sample_rate" not in tx.propagation_context.dsc()


# -- decisions at the boundary, failed samplers, and what a continued DSC keeps --------------
# (each of these guards a line a mutation check showed no other test watched)


def _outgoing_dsc() -> dict[str, str]:
    """The DSC the current span would send downstream."""
    from sentry_tracing_mw._propagation import parse_baggage

    return parse_baggage(stm.get_trace_headers()["baggage"]).sentry


def _assert_consistent(dsc: dict[str, str]) -> None:
    """§10.2: sample_rand < sample_rate exactly when sampled is "true"."""
    assert (float(dsc["sample_rand"]) < float(dsc["sample_rate"])) is (dsc["sampled"] == "true")


@pytest.mark.parametrize(("rate", "rand"), [(0.5, "0.500000"), (0.0, "0.000000")])
def test_a_sampler_rate_equal_to_sample_rand_does_not_sample(rate: float, rand: str) -> None:
    # §12.2: sampled exactly when sample_rand < rate, for a sampler's rate too (and a
    # sampler returning 0 never samples, §12.1)
    init(traces_sampler=lambda ctx: rate)
    tx = stm.start_transaction("t", headers=incoming(sample_rand=rand))
    assert tx.propagation_context.sample_rand == float(rand)
    assert tx.sampled is False


def _raising_sampler(ctx: Any) -> float:
    raise RuntimeError("sampler failed")


@pytest.mark.parametrize("sampler", [_raising_sampler, lambda ctx: "garbage"])
def test_a_failed_sampler_decides_at_rate_zero(sampler: Any) -> None:
    # §12.1: a sampler that raises or returns garbage means "not sampled", at rate 0; an
    # upstream DSC that deferred gets the rate this decision used (§10.2), so 0, not 1
    init(traces_sampler=sampler)
    with stm.start_transaction("t") as head:
        assert head.sampled is False
        assert head.propagation_context.sample_rate == 0.0
        _assert_consistent(_outgoing_dsc())
    tx = stm.start_transaction("t", headers=incoming(sample_rand="0.300000"))
    assert tx.sampled is False
    ctx = tx.propagation_context
    assert ctx.sample_rate == 0.0
    dsc = ctx.dsc()
    assert float(dsc["sample_rate"]) == 0.0
    assert dsc["sample_rand"] == "0.300000"


# What the trace id gives (§12.2, sentry-sdk's derivation) for TRACE, in [0, 1), in
# [0, 0.5) and in [0.5, 1).
DERIVED, DERIVED_BELOW_HALF, DERIVED_ABOVE_HALF = 0.471308, 0.235654, 0.735654


def test_the_values_derived_from_the_trace_id() -> None:
    from sentry_tracing_mw._ids import trace_sample_rand

    assert trace_sample_rand(TRACE) == DERIVED
    assert trace_sample_rand(TRACE, 0.0, 0.5) == DERIVED_BELOW_HALF
    assert trace_sample_rand(TRACE, 0.5, 1.0) == DERIVED_ABOVE_HALF


def _continued(flag: str, **dsc: str) -> Any:
    init(traces_sample_rate=0.5)
    return stm.start_transaction("t", headers=incoming(flag, **dsc)).propagation_context


def test_an_upstream_sample_rand_without_a_recorded_decision_is_adopted() -> None:
    ctx = _continued("", sample_rate="0.5", sample_rand="0.250000")
    assert ctx.sample_rand == 0.25
    assert ctx.dsc()["sample_rand"] == "0.250000"


def test_an_upstream_sample_rand_equal_to_the_rate_with_sampled_false_is_consistent() -> None:
    ctx = _continued("-0", sample_rate="0.5", sample_rand="0.500000", sampled="false")
    assert ctx.sample_rand == 0.5
    assert ctx.dsc()["sample_rand"] == "0.500000"


def test_an_inconsistent_upstream_sample_rand_is_replaced_by_the_derived_one() -> None:
    # §10.2 / §12.2: a sample_rand that cannot have made the recorded decision is dropped
    # and one reproducing it is derived from the trace id; the rest of the frozen DSC stays
    ctx = _continued("-1", sample_rate="0.5", sample_rand="0.900000", sampled="true", release="r1")
    assert ctx.sampled is True
    assert ctx.sample_rand == DERIVED_BELOW_HALF
    dsc = ctx.dsc()
    assert dsc["sample_rand"] == "0.235654"
    assert dsc["release"] == "r1" and dsc["trace_id"] == TRACE
    _assert_consistent(dsc)


def test_no_sample_rand_is_backfilled_against_the_recorded_decision() -> None:
    # the flag (-0) and the DSC (sampled=true) disagree and its sample_rand fits neither:
    # dropped, and no value reproduces both decisions, so the DSC goes without one
    ctx = _continued("-0", sample_rate="0.5", sample_rand="0.900000", sampled="true")
    assert ctx.sampled is False
    assert ctx.sample_rand == DERIVED_ABOVE_HALF
    assert "sample_rand" not in ctx.dsc()


def test_a_deferred_parent_backfills_from_the_whole_interval() -> None:
    ctx = _continued("", sample_rate="0.5")
    assert ctx.sample_rand == DERIVED
    assert ctx.dsc()["sample_rand"] == "0.471308"


@pytest.mark.parametrize("recorded", ["true", "false"])
def test_a_deferred_parent_backfill_respects_the_recorded_decision(recorded: str) -> None:
    # the derived value (0.471308 < 0.5) goes only into the DSC whose decision it
    # reproduces (sampled=true); with sampled=false the DSC goes without one
    ctx = _continued("", sample_rate="0.5", sampled=recorded)
    assert ctx.sample_rand == DERIVED
    dsc = ctx.dsc()
    if recorded == "true":
        assert dsc["sample_rand"] == "0.471308"
        _assert_consistent(dsc)
    else:
        assert "sample_rand" not in dsc


@pytest.mark.parametrize(("flag", "rate"), [("-1", "0.0"), ("-0", "1.0")])
def test_an_empty_backfill_interval_falls_back_to_the_whole_interval(flag: str, rate: str) -> None:
    # rate 0 with a sampled parent (rate 1 with an unsampled one): no value reproduces the
    # decision, so one is derived in [0, 1) and not backfilled; the decision is inherited
    ctx = _continued(flag, sample_rate=rate)
    assert ctx.sampled is (flag == "-1")
    assert ctx.sample_rand == DERIVED
    assert "sample_rand" not in ctx.dsc()


def test_an_upstream_dsc_without_public_key_gets_ours() -> None:
    # §10.2: public_key is required
    ctx = _continued("-1", sample_rate="1.0", sample_rand="0.100000", sampled="true")
    assert ctx.dsc()["public_key"] == "49d0f7386ad645858ae85020e393bef3"
    stm.init(dsn=None, traces_sample_rate=1.0, instrument_http_clients=False)
    tx = stm.start_transaction("t", headers=incoming("-1", sample_rate="1.0", sample_rand="0.1"))
    dsc = tx.propagation_context.dsc()
    assert "public_key" not in dsc  # no DSN, no key: never a None in the DSC
    assert all(isinstance(v, str) for v in dsc.values())
