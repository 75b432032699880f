#!/usr/bin/env python3
"""cpis from Python: the whole story through stubs generated from proto/.

Against a running `cpis dev` (its development PKI and ports), this client

  a. as Manchester council (E08000003) opens its alert stream (Subscribe) and
     notes the latest sequence, then registers a child protection plan for a
     fresh test NHS number (999 range) with UpsertPlan;
  b. shows error details: UpsertPlan with an invalid NHS number fails with
     INVALID_ARGUMENT and a google.rpc.BadRequest violation on plan.nhs_number;
  c. as the emergency department RBQ01 checks the child in (CheckIn), sending
     the clinician's user token as a clinical system sends its user's CIS2
     token (`authorization: Bearer` and `nhsd-session-urid` metadata; a
     development token from `cpis users token`), and prints what the
     clinician sees;
  d. waits for the alert on Manchester's stream, prints it (with the verified
     person who looked) and acknowledges it (AckAlerts);
  e. re-sends Manchester's complete list with SyncPlans (ListPlans, then every
     open plan and the completion message stating how many were sent): nothing
     ends; the same stream without its completion message is refused and
     changes nothing;
  f. a GP practice records that the child was not brought to an appointment
     (RecordWasNotBrought), and the demographics feed supersedes the child's
     NHS number (RecordNhsNumberChange): Manchester's stream delivers an alert
     of each kind, in order, and `describe` handles every kind a council can
     receive.

It exits 0 only if every step saw what it should. Run it with ./run.sh (which
installs the requirements and generates the stubs), or by hand:

  python3 -m pip install -r requirements.txt && ./generate.sh
  python3 client.py --state-dir ../../.cpis --port-base 50051 --cpis ../../target/debug/cpis
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "gen"))

import grpc  # noqa: E402
from google.protobuf import timestamp_pb2  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402

try:
    from cpis.attendance.v1 import attendance_pb2, attendance_pb2_grpc  # noqa: E402
    from cpis.common.v1 import common_pb2  # noqa: E402
    from cpis.notification.v1 import notification_pb2, notification_pb2_grpc  # noqa: E402
    from cpis.registry.v1 import registry_pb2, registry_pb2_grpc  # noqa: E402
except ImportError as e:  # pragma: no cover - a setup problem, not a test result
    sys.exit(f"client.py: the generated stubs are missing ({e}); run ./generate.sh first")

COUNCIL = "E08000003"  # Manchester
SETTING = "RBQ01"  # an emergency department
GP = "Y01234"  # a GP practice (scheduled care)
CLINICIAN = "Python Example Clinician"  # the person at RBQ01 who sees the answer
CALL_TIMEOUT = 15.0  # seconds, for every unary call

CONTACT = common_pb2.ContactDetails(
    team_name="Manchester Children's Services Front Door",
    office_phone="0161 234 5000",
    emergency_duty_phone="0161 255 8250",
    email="mash@example.gov.uk",
)


class StepFailed(Exception):
    """A step saw something other than what it should."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailed(message)


# --- NHS numbers -------------------------------------------------------------


def nhs_check_digit(first_nine: str) -> Optional[int]:
    """The modulus-11 check digit of nine digits; None when no number can end them."""
    total = sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1)))
    digit = 11 - total % 11
    if digit == 11:
        return 0
    if digit == 10:
        return None
    return digit


def fresh_test_nhs_number() -> str:
    """A valid NHS number from the test range 999 000 0000 - 999 999 9999.

    Random, so that reruns against the same database register a person never
    seen before (and so get a new alert)."""
    while True:
        nine = "999" + f"{secrets.randbelow(10**6):06d}"
        digit = nhs_check_digit(nine)
        if digit is not None:
            return nine + str(digit)


def with_wrong_check_digit(nhs_number: str) -> str:
    """The same test number with a check digit that cannot be right."""
    nine, digit = nhs_number[:9], int(nhs_number[9])
    return nine + str((digit + 1) % 10)


# --- connections ---------------------------------------------------------------


def read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        sys.exit(
            f"client.py: cannot read {path} ({e.strerror}). `cpis dev --state-dir DIR` creates the "
            "development PKI under DIR/pki; pass the same DIR as --state-dir."
        )


def credentials(pki: str, kind: str, code: str) -> grpc.ChannelCredentials:
    """Mutual TLS as one identity: the dev CA verifies the server, our
    certificate (URI SAN spiffe://cpis.local/<kind>/<code>) identifies us."""
    return grpc.ssl_channel_credentials(
        root_certificates=read(os.path.join(pki, "ca.pem")),
        private_key=read(os.path.join(pki, f"{kind}-{code}-key.pem")),
        certificate_chain=read(os.path.join(pki, f"{kind}-{code}.pem")),
    )


def connect(host: str, port: int, creds: grpc.ChannelCredentials, timeout: float) -> grpc.Channel:
    target = f"{host}:{port}"
    channel = grpc.secure_channel(target, creds)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        channel.close()
        raise StepFailed(
            f"cannot connect to {target} over mutual TLS within {timeout:.0f} s: is `cpis dev` running "
            "with this --port-base, and was --state-dir the one it uses (same CA)?"
        )
    return channel


def rpc_error(e: grpc.RpcError) -> str:
    return f"{e.code().name}: {e.details()}"


def now_timestamp() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


# --- the alert stream ------------------------------------------------------------


class AlertStream:
    """A Subscribe stream read by a background thread into a queue."""

    def __init__(self, stub: notification_pb2_grpc.NotificationServiceStub, after_sequence: int):
        self.events: "queue.Queue[tuple[str, object]]" = queue.Queue()
        self.call = stub.Subscribe(notification_pb2.SubscribeRequest(after_sequence=after_sequence))
        self.closing = False
        self.thread = threading.Thread(target=self._read, name="subscribe", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.events.put(("event", response))
            self.events.put(("end", None))
        except grpc.RpcError as e:
            if not (self.closing and e.code() == grpc.StatusCode.CANCELLED):
                self.events.put(("error", e))

    def next(self, deadline: float) -> Optional[notification_pb2.SubscribeResponse]:
        """The next event, or None at the deadline; StepFailed when the stream ended."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            kind, value = self.events.get(timeout=remaining)
        except queue.Empty:
            return None
        if kind == "error":
            raise StepFailed(f"the Subscribe stream failed: {rpc_error(value)}")
        if kind == "end":
            raise StepFailed("the Subscribe stream ended although nobody closed it")
        return value

    def close(self) -> None:
        self.closing = True
        self.call.cancel()
        self.thread.join(timeout=5)


# --- the story -----------------------------------------------------------------------


@dataclass
class Story:
    args: argparse.Namespace
    nhs_number: str = field(default_factory=fresh_test_nhs_number)
    local_reference: str = field(default_factory=lambda: f"PY-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}")
    stream: Optional[AlertStream] = None
    noted_sequence: int = 0  # latest sequence known when the stream opened
    last_sequence: Optional[int] = None  # last alert sequence received on the stream
    episode_id: str = ""

    # Channels, opened lazily per identity and port.
    _channels: dict = field(default_factory=dict)

    def channel(self, kind: str, code: str, offset: int) -> grpc.Channel:
        key = (kind, code, offset)
        if key not in self._channels:
            pki = os.path.join(self.args.state_dir, "pki")
            self._channels[key] = connect(
                self.args.host, self.args.port_base + offset, credentials(pki, kind, code), self.args.connect_timeout
            )
        return self._channels[key]

    def registry(self) -> registry_pb2_grpc.RegistryServiceStub:
        return registry_pb2_grpc.RegistryServiceStub(self.channel("council", COUNCIL, 0))

    def attendance(self) -> attendance_pb2_grpc.AttendanceServiceStub:
        return attendance_pb2_grpc.AttendanceServiceStub(self.channel("setting", SETTING, 1))

    def notification(self) -> notification_pb2_grpc.NotificationServiceStub:
        return notification_pb2_grpc.NotificationServiceStub(self.channel("council", COUNCIL, 2))

    def plan(self, nhs_number: str) -> registry_pb2.Plan:
        return registry_pb2.Plan(
            local_reference=self.local_reference,
            nhs_number=nhs_number,
            date_of_birth="2016-04-02",
            plan_type=common_pb2.PLAN_TYPE_CHILD_PROTECTION,
            start_date="2025-01-10",
            contact=CONTACT,
        )

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        for channel in self._channels.values():
            channel.close()

    def take_alert(self, alert: notification_pb2.Alert) -> None:
        """Every alert on the stream: in order, with no gaps."""
        if self.last_sequence is not None:
            expect(
                alert.sequence == self.last_sequence + 1,
                f"alert sequence {alert.sequence} follows {self.last_sequence} on the stream: "
                "sequences must be delivered in order with no gaps",
            )
        expect(alert.council_code == COUNCIL, f"an alert of council {alert.council_code!r} reached {COUNCIL}'s stream")
        self.last_sequence = alert.sequence

    # a. subscribe, then register the plan
    def subscribe_and_register(self) -> None:
        self.stream = AlertStream(self.notification(), after_sequence=0)
        print(f"  {COUNCIL} opened its alert stream (Subscribe, after_sequence 0 = after the last acknowledged)")
        wait = self.args.first_event_timeout
        event = self.stream.next(time.monotonic() + wait)
        expect(
            event is not None,
            f"no heartbeat or alert on the Subscribe stream within {wait:.0f} s "
            "(cpis dev sends a heartbeat after --heartbeat-secs idle, 15 by default)",
        )
        which = event.WhichOneof("event")
        if which == "heartbeat":
            self.noted_sequence = event.heartbeat.latest_sequence
            print(f"  first event: heartbeat, latest sequence {self.noted_sequence}")
        elif which == "alert":
            self.take_alert(event.alert)
            self.noted_sequence = event.alert.sequence
            print(f"  first event: an earlier unacknowledged alert, sequence {self.noted_sequence}")
        else:
            raise StepFailed(f"a SubscribeResponse with no event: {event}")

        try:
            stored = self.registry().UpsertPlan(
                registry_pb2.UpsertPlanRequest(plan=self.plan(self.nhs_number)), timeout=CALL_TIMEOUT
            ).plan
        except grpc.RpcError as e:
            raise StepFailed(f"UpsertPlan failed: {rpc_error(e)}")
        expect(bool(stored.plan_id), "UpsertPlan returned a plan without plan_id")
        expect(stored.council_code == COUNCIL, f"the stored plan belongs to {stored.council_code!r}, not {COUNCIL}")
        expect(stored.nhs_number == self.nhs_number, "the stored plan has another NHS number")
        expect(stored.version >= 1, f"the stored plan has version {stored.version}")
        print(
            f"  {COUNCIL} registered a child protection plan: test NHS number {self.nhs_number}, "
            f"reference {stored.local_reference}, plan_id {stored.plan_id}, version {stored.version}"
        )

    # b. error details
    def invalid_nhs_number_is_explained(self) -> None:
        bad = with_wrong_check_digit(self.nhs_number)
        bad_plan = self.plan(bad)
        bad_plan.local_reference = self.local_reference + "-BAD"
        try:
            self.registry().UpsertPlan(registry_pb2.UpsertPlanRequest(plan=bad_plan), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            error = e
        else:
            raise StepFailed(f"UpsertPlan accepted the invalid test NHS number {bad}")
        expect(
            error.code() == grpc.StatusCode.INVALID_ARGUMENT,
            f"UpsertPlan with an invalid NHS number: expected INVALID_ARGUMENT, got {rpc_error(error)}",
        )
        try:
            status = rpc_status.from_call(error)
        except ValueError as e:
            raise StepFailed(f"the grpc-status-details-bin trailer disagrees with the status: {e}")
        expect(status is not None, "INVALID_ARGUMENT without google.rpc.Status details (grpc-status-details-bin)")
        violations = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend(bad_request.field_violations)
        expect(
            bool(violations),
            f"no google.rpc.BadRequest among the status details ({[d.type_url for d in status.details]})",
        )
        print(f"  INVALID_ARGUMENT: {error.details()}")
        for v in violations:
            print(f"    BadRequest field violation: {v.field}: {v.description}")
        fields = [v.field for v in violations]
        expect("plan.nhs_number" in fields, f"no field violation on plan.nhs_number (got {fields})")
        texts = [error.details() or ""] + [v.description for v in violations]
        expect(not any(bad in t for t in texts), "the error echoes the NHS number back")

    def user_metadata(self, setting: str = SETTING, activity: str = "B0107") -> tuple[tuple[str, str], ...]:
        """The clinician's token and role, as gRPC metadata. In production a
        clinical system sends its signed-in user's CIS2 token; here `cpis users
        token` signs one with cpis dev's development identity provider."""
        printed = subprocess.run(
            [self.args.cpis, "users", "token", "--state-dir", self.args.state_dir, "--setting", setting,
             "--name", CLINICIAN, "--job-role", "R8000", "--activity", activity, "--json"],
            check=True, capture_output=True, text=True,
        ).stdout
        token = json.loads(printed)
        return (("authorization", f"Bearer {token['token']}"), ("nhsd-session-urid", token["role_id"]))

    # c. check-in
    def check_in(self) -> None:
        request = attendance_pb2.CheckInRequest(
            request_id=str(uuid.uuid4()),
            nhs_number=self.nhs_number,
            arrived_at=now_timestamp(),
            setting_type=common_pb2.SETTING_TYPE_EMERGENCY_DEPARTMENT,
        )
        try:
            anonymous = self.attendance().CheckIn(request, timeout=CALL_TIMEOUT)
            raise StepFailed(f"a check-in without a user token was answered: {anonymous}")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.UNAUTHENTICATED, f"without a user token: {rpc_error(e)}")
            print(f"  without a user token: {e.code().name} ({e.details()})")
        try:
            response = self.attendance().CheckIn(request, timeout=CALL_TIMEOUT, metadata=self.user_metadata())
        except grpc.RpcError as e:
            raise StepFailed(f"CheckIn failed: {rpc_error(e)}")
        print(f"  {SETTING} (emergency department) checked in test NHS number {self.nhs_number}; the clinician sees:")
        if not response.flagged:
            print("    not flagged")
        for flag in response.flags:
            kind = enum_name(common_pb2.PlanType, flag.plan_type)
            until = f"until {flag.end_date}" if flag.end_date else "open-ended"
            print(f"    FLAG {kind} since {flag.start_date} ({until}){'  [ENDED]' if flag.ended else ''}")
            print(f"      responsible council: {flag.council_name} ({flag.council_code})")
            print(f"      team: {flag.contact.team_name}")
            print(f"      office hours: {flag.contact.office_phone}")
            print(f"      out of hours (emergency duty team): {flag.contact.emergency_duty_phone}")
            print(f"      email: {flag.contact.email}")
        if response.previous_episodes:
            print(f"    previous unscheduled-care visits ({len(response.previous_episodes)}):")
            for ep in response.previous_episodes:
                kind = enum_name(common_pb2.SettingType, ep.setting_type)
                print(f"      {ep.arrived_at.ToJsonString()} {ep.setting_code} {kind}")
        else:
            print("    previous unscheduled-care visits: none")
        print(f"    episode {response.episode_id}")

        expect(response.flagged, "the child on a plan was not flagged at check-in")
        ours = [f for f in response.flags if f.council_code == COUNCIL]
        expect(len(ours) == 1, f"expected one flag from {COUNCIL}, got {len(ours)}")
        flag = ours[0]
        expect(flag.plan_type == common_pb2.PLAN_TYPE_CHILD_PROTECTION, "the flag is not a child protection plan")
        expect(flag.start_date == "2025-01-10", f"the flag's start date is {flag.start_date!r}")
        expect(not flag.ended, "the open plan's flag is marked ended")
        expect(bool(flag.council_name), "the flag has no council name")
        expect(flag.contact.office_phone == CONTACT.office_phone, "the flag's office phone is not the plan's")
        expect(
            flag.contact.emergency_duty_phone == CONTACT.emergency_duty_phone,
            "the flag's emergency duty phone is not the plan's",
        )
        expect(bool(response.episode_id), "a flagged check-in returned no episode_id")
        expect(not response.previous_episodes, "a person never seen before has previous episodes")
        self.episode_id = response.episode_id

    # d. the alert
    def alert_arrives(self) -> None:
        wait = self.args.alert_timeout
        deadline = time.monotonic() + wait
        while True:
            event = self.stream.next(deadline)
            expect(
                event is not None,
                f"no alert for test NHS number {self.nhs_number} on {COUNCIL}'s stream within {wait:.0f} s",
            )
            if event.WhichOneof("event") != "alert":
                continue
            alert = event.alert
            self.take_alert(alert)
            if alert.nhs_number == self.nhs_number:
                break
            print(f"  (skipping another alert, sequence {alert.sequence})")

        ep = alert.episode
        plan_type = enum_name(common_pb2.PlanType, alert.plan_type)
        setting_type = enum_name(common_pb2.SettingType, ep.setting_type)
        print(f"  {COUNCIL}'s stream delivered alert {alert.alert_id}:")
        print(f"    sequence          {alert.sequence}")
        print(f"    council           {alert.council_code}")
        print(f"    NHS number        {alert.nhs_number} (test)")
        print(f"    plan              {plan_type}, reference {alert.local_reference}")
        print(f"    attended          {ep.setting_code} {setting_type} at {ep.arrived_at.ToJsonString()}")
        print(f"    episode           {ep.episode_id}")
        print(f"    priority          {enum_name(notification_pb2.AlertPriority, alert.priority)}")
        print(f"    created at        {alert.created_at.ToJsonString()}")
        v = alert.viewer
        print(f"    seen by           {v.name} ({v.job_role_name}, {v.job_role_code}) at {v.organisation_code}, "
              f"SDS user {v.user_id}, role profile {v.role_profile_id}, verified {v.verified}")

        expect(
            alert.priority == notification_pb2.ALERT_PRIORITY_ROUTINE,
            f"a first attendance has priority {enum_name(notification_pb2.AlertPriority, alert.priority)}, not ROUTINE",
        )
        expect(
            alert.sequence > self.noted_sequence,
            f"the new alert's sequence {alert.sequence} is not after {self.noted_sequence}",
        )
        expect(alert.local_reference == self.local_reference, f"the alert names reference {alert.local_reference!r}")
        expect(alert.plan_type == common_pb2.PLAN_TYPE_CHILD_PROTECTION, "the alert's plan type is not CPP")
        expect(ep.setting_code == SETTING, f"the alert's setting is {ep.setting_code!r}, not {SETTING}")
        expect(ep.setting_type == common_pb2.SETTING_TYPE_EMERGENCY_DEPARTMENT, "the alert's setting type is not ED")
        expect(ep.episode_id == self.episode_id, "the alert's episode is not the check-in's")
        expect(alert.viewer.verified and alert.viewer.name == CLINICIAN, "the alert does not name who looked")
        expect(alert.viewer.organisation_code == SETTING, "the alert's viewer is not at the setting")

        try:
            ack = self.notification().AckAlerts(
                notification_pb2.AckAlertsRequest(up_to_sequence=alert.sequence), timeout=CALL_TIMEOUT
            )
        except grpc.RpcError as e:
            raise StepFailed(f"AckAlerts failed: {rpc_error(e)}")
        print(f"  {COUNCIL} acknowledged up to sequence {alert.sequence}: "
              f"acknowledged_through {ack.acknowledged_through}")
        expect(
            ack.acknowledged_through >= alert.sequence,
            f"acknowledged_through {ack.acknowledged_through} is below {alert.sequence}",
        )


    # e. the complete list, all or nothing
    def sync_complete_list(self) -> None:
        plans = []
        token = ""
        while True:
            page = self.registry().ListPlans(
                registry_pb2.ListPlansRequest(page_size=1000, page_token=token), timeout=CALL_TIMEOUT
            )
            plans.extend(page.plans)
            token = page.next_page_token
            if not token:
                break
        expect(any(p.local_reference == self.local_reference for p in plans), "ListPlans lacks the plan of step a")

        def upload(complete: bool):
            for p in plans:
                yield registry_pb2.SyncPlansRequest(plan=p)
            if complete:
                yield registry_pb2.SyncPlansRequest(completion=registry_pb2.SyncCompletion(plan_rows=len(plans)))

        # Without the completion message the upload may be a truncated file: refused, nothing changed.
        try:
            self.registry().SyncPlans(upload(complete=False), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            expect(
                e.code() == grpc.StatusCode.INVALID_ARGUMENT and "completion" in (e.details() or ""),
                f"an upload without its completion message: expected INVALID_ARGUMENT on completion, got {rpc_error(e)}",
            )
            print(f"  without the completion message: {e.code().name}: {e.details()}")
        else:
            raise StepFailed("SyncPlans applied an upload that never said it was complete")
        try:
            r = self.registry().SyncPlans(upload(complete=True), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            raise StepFailed(f"SyncPlans failed: {rpc_error(e)}")
        print(
            f"  {COUNCIL} re-sent its complete list of {len(plans)} open plan(s): received {r.received}, "
            f"created {r.created}, updated {r.updated}, unchanged {r.unchanged}, ended {r.ended}, rejected {r.rejected}"
        )
        expect(r.received == len(plans), f"SyncPlans received {r.received} of {len(plans)} rows")
        expect(r.ended == 0, f"re-sending the complete list ended {r.ended} plan(s): {list(r.ended_references)}")
        expect(r.rejected == 0, f"SyncPlans rejected {r.rejected} row(s): {list(r.rejections)[:3]}")

    # f. the other kinds of alert
    def other_kinds(self) -> None:
        appointment = timestamp_pb2.Timestamp()
        appointment.FromSeconds(int(time.time()) - 3600)
        stub = attendance_pb2_grpc.AttendanceServiceStub(self.channel("setting", GP, 1))
        try:
            stub.RecordWasNotBrought(
                attendance_pb2.RecordWasNotBroughtRequest(
                    request_id=str(uuid.uuid4()), nhs_number=self.nhs_number, appointment_at=appointment,
                    setting_type=common_pb2.SETTING_TYPE_GP_PRACTICE),
                timeout=CALL_TIMEOUT, metadata=self.user_metadata(GP, "B0170"))
        except grpc.RpcError as e:
            raise StepFailed(f"RecordWasNotBrought failed: {rpc_error(e)}")
        print(f"  {GP} recorded a missed appointment (the answer is empty whether or not the child is flagged)")
        replacement = fresh_test_nhs_number()
        feed = attendance_pb2_grpc.AttendanceServiceStub(self.channel("service", "demographics", 1))
        change = common_pb2.NhsNumberChange(
            nhs_number=self.nhs_number, kind=common_pb2.NHS_NUMBER_CHANGE_KIND_SUPERSEDED,
            replacement_nhs_number=replacement, effective_date=time.strftime("%Y-%m-%d"),
            event_id=f"py-{uuid.uuid4()}")
        try:
            r = feed.RecordNhsNumberChange(attendance_pb2.RecordNhsNumberChangeRequest(change=change), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            raise StepFailed(f"RecordNhsNumberChange failed: {rpc_error(e)}")
        print(f"  the demographics feed superseded test NHS number {self.nhs_number} by {replacement}: "
              f"{r.plans} plan(s), {r.councils_alerted} council(s) alerted")
        wanted = [notification_pb2.ALERT_KIND_WAS_NOT_BROUGHT, notification_pb2.ALERT_KIND_NHS_NUMBER_SUPERSEDED]
        seen = []
        deadline = time.monotonic() + self.args.alert_timeout
        while len(seen) < len(wanted):
            event = self.stream.next(deadline)
            expect(event is not None, f"alerts of kinds {wanted} did not all arrive; saw {seen}")
            if event.WhichOneof("event") != "alert":
                continue
            alert = event.alert
            self.take_alert(alert)
            if alert.nhs_number != self.nhs_number:
                continue
            print("  " + describe(alert))
            seen.append(alert.kind)
        expect(seen == wanted, f"kinds {seen}, expected {wanted} in this order")


def describe(alert: notification_pb2.Alert) -> str:
    """What a council's case system would make of an alert, for every kind."""
    kind = alert.kind
    who = f"{alert.viewer.name} ({alert.viewer.job_role_name})" if alert.viewer.name else "someone unverified"
    if kind in (notification_pb2.ALERT_KIND_ATTENDANCE, notification_pb2.ALERT_KIND_REPEAT_ATTENDANCE,
                notification_pb2.ALERT_KIND_UNSPECIFIED):
        repeat = " - REPEAT ATTENDANCE" if alert.priority == notification_pb2.ALERT_PRIORITY_REPEAT_ATTENDANCE else ""
        return (f"#{alert.sequence} {alert.local_reference}: attended {alert.episode.setting_code} at "
                f"{alert.episode.arrived_at.ToJsonString()}, seen by {who}{repeat}")
    if kind == notification_pb2.ALERT_KIND_WAS_NOT_BROUGHT:
        m = alert.was_not_brought
        return (f"#{alert.sequence} {alert.local_reference}: NOT BROUGHT to {m.setting_code} at "
                f"{m.appointment_at.ToJsonString()} ({m.missed_in_last_90_days} in 90 days), recorded by {who}")
    if kind == notification_pb2.ALERT_KIND_NHS_NUMBER_SUPERSEDED:
        n = alert.nhs_number_change
        return (f"#{alert.sequence} {', '.join(n.local_references)}: NHS number superseded by "
                f"{n.replacement_nhs_number} from {n.effective_date}: update the plan to the new number")
    if kind == notification_pb2.ALERT_KIND_NHS_NUMBER_INACTIVE:
        n = alert.nhs_number_change
        return (f"#{alert.sequence} {', '.join(n.local_references)}: NHS number made inactive from "
                f"{n.effective_date}: check the child's current number")
    return f"#{alert.sequence}: an alert of a kind this client does not know ({kind}): keep it, in order"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", default=".cpis", help="cpis dev's state directory (PKI in STATE_DIR/pki)")
    parser.add_argument("--port-base", type=int, default=50051, help="registry port; attendance +1, notification +2")
    parser.add_argument("--host", default="localhost", help="the name the dev server certificates carry")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for each connection")
    parser.add_argument(
        "--first-event-timeout", type=float, default=20.0, help="seconds to wait for the stream's first event"
    )
    parser.add_argument("--alert-timeout", type=float, default=20.0, help="seconds to wait for the alert")
    parser.add_argument(
        "--cpis", default=os.environ.get("CPIS_BIN", "cpis"), help="the cpis binary, for `cpis users token`"
    )
    args = parser.parse_args()

    story = Story(args)
    ports = f"{args.port_base}-{args.port_base + 2}"
    print(f"cpis Python client example: {args.host} ports {ports}, PKI in {os.path.join(args.state_dir, 'pki')}")
    steps: list[tuple[str, str, Callable[[], None], list[str]]] = [
        ("a", "council subscribes, then registers a plan", story.subscribe_and_register, []),
        ("b", "an invalid NHS number is explained (google.rpc.BadRequest)", story.invalid_nhs_number_is_explained, []),
        ("c", "setting checks the child in and sees the flag", story.check_in, ["a"]),
        ("d", "council's stream delivers the alert; council acknowledges it", story.alert_arrives, ["a", "c"]),
        ("e", "council re-sends its complete list: all or nothing", story.sync_complete_list, ["a"]),
        ("f", "a missed appointment and an NHS number change reach the stream", story.other_kinds, ["a", "d"]),
    ]
    outcome: dict[str, str] = {}
    failures: list[str] = []
    try:
        for key, title, run, needs in steps:
            print(f"\n== {key}. {title}")
            missing = [n for n in needs if outcome.get(n) != "passed"]
            if missing:
                outcome[key] = "skipped"
                print(f"  SKIPPED: needs step {', '.join(missing)}")
                continue
            try:
                run()
            except StepFailed as e:
                outcome[key] = "failed"
                failures.append(f"{key}. {title}: {e}")
                print(f"  FAILED: {e}")
            else:
                outcome[key] = "passed"
                print("  ok")
    finally:
        story.close()

    counts = {k: sum(1 for v in outcome.values() if v == k) for k in ("passed", "failed", "skipped")}
    print()
    if failures or counts["skipped"]:
        print("the Python client example FAILED:")
        for f in failures:
            print(f"  {f}")
    else:
        print("the Python client example saw everything it should")
    summary = f"{counts['passed']} passed, {counts['failed']} failed"
    if counts["skipped"]:
        summary += f", {counts['skipped']} skipped"
    print(f"example: {summary}")
    return 0 if not failures and not counts["skipped"] else 1


if __name__ == "__main__":
    sys.exit(main())
