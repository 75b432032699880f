#!/usr/bin/env python3
"""A Subscribe stream the server ends is seen by grpcio as UNAVAILABLE, never OK.

Some clients read a stream that ends with status OK as "finished" and stop
listening for alerts. cpis ends every stream it closes (shutdown, database
loss) with UNAVAILABLE, after the alerts already buffered, so clients know
to reconnect and resume from their last sequence.

As Manchester council this script opens its alert stream with `replay`
(everything from sequence 1, whatever was acknowledged), reads the first
event, writes --ready-file, then keeps reading while the caller stops
`cpis dev` (CI sends it SIGTERM). It exits 0 only if the stream ended with
UNAVAILABLE and the server's own message. Run by .ci/python-example.sh
through run.sh (CPIS_PY_SCRIPT=stream_end.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc  # noqa: E402

from client import COUNCIL, StepFailed, connect, credentials, notification_pb2, notification_pb2_grpc  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", default=".cpis")
    parser.add_argument("--port-base", type=int, default=50051)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--ready-file", required=True, help="written once the stream delivered its first event")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds before giving up")
    args = parser.parse_args()

    pki = os.path.join(args.state_dir, "pki")
    try:
        channel = connect(args.host, args.port_base + 2, credentials(pki, "council", COUNCIL), 10.0)
    except StepFailed as e:
        print(f"stream_end.py: {e}", file=sys.stderr)
        return 1
    stub = notification_pb2_grpc.NotificationServiceStub(channel)
    call = stub.Subscribe(notification_pb2.SubscribeRequest(after_sequence=0, replay=True))
    timer = threading.Timer(args.timeout, call.cancel)
    timer.start()
    events = 0
    try:
        for _event in call:
            events += 1
            if events == 1:
                with open(args.ready_file, "w") as f:
                    f.write("ready\n")
        print(f"FAIL: the stream ended with status OK after {events} events: a client would think it was finished")
        return 1
    except grpc.RpcError as e:
        code, details = e.code(), e.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and "reconnect" in details:
            print(f"ok: after {events} events the server ended the stream with UNAVAILABLE: {details}")
            return 0
        print(f"FAIL: the stream ended with {code.name}: {details} (after {events} events)")
        return 1
    finally:
        timer.cancel()
        channel.close()


if __name__ == "__main__":
    sys.exit(main())
