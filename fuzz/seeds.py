"""Write a seed corpus for fuzz_headers.py: ``python fuzz/seeds.py DIR``.

Seeds are the hostile-header corpus of the test suite (tests/hostile/corpus.py, each value
cut to 2 KiB) laid out for every header target, plus valid envelopes and rate limits.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile.corpus import CASES  # noqa: E402

HEADERS = (b"sentry-trace", b"traceparent", b"tracestate", b"baggage")
TID = b"771a43a4192642f0b136d5159a501700"
EXTRA = [
    bytes([7]) + b'{"event_id":"' + TID + b'"}\n{"type":"transaction","length":2}\n{}\n',
    bytes([7]) + b'{}\n{"type":"client_report"}\n{"discarded_events":[]}',
    bytes([8]) + b"60:transaction:key, 2700:default;error;security:organization:quota\n120",
    bytes([8]) + b"1.5::org\nWed, 21 Oct 2015 07:28:00 GMT",
]


def seeds() -> list[bytes]:
    out = list(EXTRA)
    for case in CASES:
        fields = []
        for name in HEADERS:
            values = [v[:2048] for k, v in case.headers if k.lower() == name]
            fields.append(b"\r".join(values).replace(b"\n", b" "))
        joined = b"\n".join(fields)
        for target in (0, 1, 2, 9):
            out.append(bytes([target]) + joined)
        for target, index in ((3, 3), (4, 2), (5, 1), (6, 0)):
            if fields[index]:
                out.append(bytes([target]) + (b"\n" if target == 3 else b"") + fields[index])
    return out


def main() -> None:
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for seed in seeds():
        (target / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


if __name__ == "__main__":
    main()
