#!/usr/bin/env python3
"""cpis from a clinical system vendor's FHIR client: the national CP-IS FHIR
R4 searches against cpis, changing only the base URL and the client
certificate.

Against a running `cpis dev` (its development PKI, FHIR port = --port-base + 3),
this client

  0. as Manchester council (E08000003) registers, through the `cpis` command
     line, a child protection plan for a fresh child and an unborn child
     protection plan for a fresh mother (random NHS numbers in the 999 test
     range);
  1. reads the CapabilityStatement (GET /FHIR/R4/metadata);
  2. notifying read: as the emergency department RBQ01, searches CareTeam for
     the child with `IsUnscheduledAccessEvent: true` (a check-in: Manchester
     is alerted), then retries with the same X-Request-ID (the same answer);
  3. silent read: as the GP practice Y01234, searches CareTeam for the mother
     with `IsUnscheduledAccessEvent: false` (audited, no alert) and reads the
     expected delivery date;
  4. access history: searches AuditEvent for the child (the notifying read is
     there, the silent read is not);
  5. an invalid NHS number: 400 with an OperationOutcome;
  6. an unflagged person: a Bundle with total 0;
  7. an unknown resource type (404) and a council calling a setting's search
     (403): OperationOutcomes.

Every response is parsed and validated with the `fhir.resources` R4B models.
It exits 0 only if every step saw what it should.
"""

from __future__ import annotations

import argparse
import json
import csv
import os
import random
import subprocess
import sys
import tempfile
import uuid

import requests
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.careteam import CareTeam
from fhir.resources.R4B.operationoutcome import OperationOutcome

NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
COUNCIL = "E08000003"  # Manchester
ED = "RBQ01"  # an emergency department (unscheduled care)
GP = "Y01234"  # a GP practice (scheduled care)
EDD = "https://fhir.cpis.local/StructureDefinition/expected-delivery-date"
TIMEOUT = 15.0


def test_nhs_number() -> str:
    """A random NHS number in the test range 999 000 0000 - 999 999 9999."""
    while True:
        nine = "999" + "".join(random.choice("0123456789") for _ in range(6))
        total = sum(int(d) * w for d, w in zip(nine, range(10, 1, -1)))
        check = 11 - total % 11
        if check == 10:
            continue
        return nine + ("0" if check == 11 else str(check))


class Failure(Exception):
    pass


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise Failure(what)
    print(f"   ok: {what}")


class Fhir:
    """A FHIR client presenting one identity's certificate."""

    def __init__(self, base: str, pki: str, kind: str, code: str, user: dict | None = None):
        self.base = base
        self.session = requests.Session()
        # REQUESTS_CA_BUNDLE and proxy variables would override the cpis CA.
        self.session.trust_env = False
        self.session.cert = (os.path.join(pki, f"{kind}-{code}.pem"), os.path.join(pki, f"{kind}-{code}-key.pem"))
        self.session.verify = os.path.join(pki, "ca.pem")
        self.session.headers["Accept"] = "application/fhir+json"
        if user:
            # The person's CIS2 token and selected role, on every request.
            self.session.headers["Authorization"] = f"Bearer {user['token']}"
            self.session.headers["NHSD-Session-URID"] = user["role_id"]

    def get(self, path: str, params=None, headers=None) -> requests.Response:
        r = self.session.get(f"{self.base}/{path}", params=params, headers=headers or {}, timeout=TIMEOUT)
        ctype = r.headers.get("Content-Type", "")
        if not ctype.startswith("application/fhir+json"):
            raise Failure(f"GET {path}: content type {ctype!r}, expected application/fhir+json")
        return r

    def search(self, resource: str, nhs: str, headers=None) -> tuple[requests.Response, Bundle]:
        r = self.get(resource, {"patient:identifier": f"{NHS_SYSTEM}|{nhs}"}, headers)
        if r.status_code != 200:
            raise Failure(f"GET {resource}: HTTP {r.status_code}: {r.text}")
        bundle = Bundle.model_validate(r.json())
        if bundle.type != "searchset":
            raise Failure(f"GET {resource}: a {bundle.type} Bundle, expected searchset")
        return r, bundle


def resources(bundle: Bundle, model):
    """The bundle's resources, each validated with `model`."""
    return [model.model_validate(e.resource.model_dump(mode="json")) for e in (bundle.entry or [])]


def outcome(r: requests.Response, status: int, what: str) -> OperationOutcome:
    expect(r.status_code == status, f"{what}: HTTP {r.status_code} (expected {status})")
    oo = OperationOutcome.model_validate(r.json())
    print(f"      OperationOutcome: {oo.issue[0].code}: {oo.issue[0].diagnostics}")
    return oo


def register(cpis: str, state_dir: str, port_base: int, child: str, mother: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False, newline="") as f:
        w = csv.writer(f)
        w.writerow(["local_reference", "nhs_number", "date_of_birth", "plan_type", "start_date",
                    "expected_delivery_date", "team_name", "office_phone", "emergency_duty_phone", "email"])
        contact = ["Manchester Children's Services Front Door", "0161 234 5000", "0161 255 8250",
                   "mash@example.gov.uk"]
        w.writerow([f"FHIR-{child[-6:]}", child, "2016-04-02", "CHILD_PROTECTION", "2025-01-10", ""] + contact)
        w.writerow([f"FHIR-U-{mother[-6:]}", mother, "", "UNBORN_CHILD_PROTECTION", "2026-10-01", "2027-03-01"]
                   + contact)
        path = f.name
    try:
        out = subprocess.run([cpis, "plans", "--state-dir", state_dir, "--port-base", str(port_base), "--council",
                              COUNCIL, "sync", "--csv", path, "--allow-mass-end"],
                             check=True, timeout=60, capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    print("      " + out.strip().replace("\n", "\n      "))
    expect("created 2" in out and "rejected 0" in out, "both plans registered")


def user_token(cpis: str, state_dir: str, setting: str, name: str, activities: str) -> dict:
    """A development token for a person at `setting` (`cpis users token`): in
    production, the clinical system's signed-in user's CIS2 token."""
    out = subprocess.run([cpis, "users", "token", "--state-dir", state_dir, "--setting", setting, "--name", name,
                          "--activity", activities, "--json"], check=True, timeout=60, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", default=".cpis")
    ap.add_argument("--port-base", type=int, default=50051)
    ap.add_argument("--cpis", default="cpis", help="the cpis binary (to register the plans as the council)")
    args = ap.parse_args()
    pki = os.path.join(args.state_dir, "pki")
    base = f"https://localhost:{args.port_base + 3}/FHIR/R4"
    ed = Fhir(base, pki, "setting", ED, user_token(args.cpis, args.state_dir, ED, "FHIR Example Nurse", "B0107"))
    gp = Fhir(base, pki, "setting", GP, user_token(args.cpis, args.state_dir, GP, "FHIR Example GP", "B0170"))
    council = Fhir(base, pki, "council", COUNCIL)
    child, mother, nobody = test_nhs_number(), test_nhs_number(), test_nhs_number()

    print("0. Manchester registers a child protection plan and an unborn child protection plan")
    register(args.cpis, args.state_dir, args.port_base, child, mother)

    print(f"1. GET {base}/metadata")
    cs = CapabilityStatement.model_validate(council.get("metadata").json())
    supported = {r.type: [i.code for i in r.interaction] for r in cs.rest[0].resource}
    expect(cs.fhirVersion == "4.0.1", "a FHIR 4.0.1 CapabilityStatement")
    expect(supported == {"CareTeam": ["search-type"], "AuditEvent": ["search-type"]},
           f"supports exactly {supported}")

    print("2. notifying read (IsUnscheduledAccessEvent: true) of the child at the emergency department")
    request_id = str(uuid.uuid4())
    notifying = {"IsUnscheduledAccessEvent": "true", "X-Request-ID": request_id, "X-Correlation-ID": request_id}
    r, bundle = ed.search("CareTeam", child, notifying)
    teams = resources(bundle, CareTeam)
    expect(bundle.total == 1 and len(teams) == 1, "a Bundle with total 1: one CareTeam")
    team = teams[0]
    org = team.contained[0]
    phones = {t.extension[0].valueCode: t.value for t in org.telecom if t.system == "phone"}
    print(f"      {team.category[0].coding[0].display} ({team.status}) since {team.period.start}; "
          f"{org.name}: office hours {phones.get('office-hours')}, out of hours {phones.get('out-of-hours')}")
    expect(team.status == "active" and team.category[0].coding[0].code == "child-protection",
           "an active child protection plan")
    expect(team.subject.identifier.value == child, "about the child")
    expect(r.headers.get("X-Correlation-ID") == request_id, "the trace id came back")
    _, again = ed.search("CareTeam", child, notifying)
    expect(again.total == 1, "a retry with the same X-Request-ID gives the same answer")

    print("3. silent read (IsUnscheduledAccessEvent: false) of the mother at the GP practice")
    silent = {"IsUnscheduledAccessEvent": "false", "X-Setting-Type": "gp-practice"}
    _, bundle = gp.search("CareTeam", mother, silent)
    teams = resources(bundle, CareTeam)
    expect(bundle.total == 1 and teams[0].category[0].coding[0].code == "unborn-child-protection",
           "an unborn child protection plan on the mother's NHS number")
    edd = [e.valueDate for e in (teams[0].extension or []) if e.url == EDD]
    expect([str(d) for d in edd] == ["2027-03-01"], f"expected delivery date {edd[0] if edd else None}")

    print("4. access history (AuditEvent) of the child")
    history: dict = {}
    _, bundle = ed.search("AuditEvent", child, history)
    events = resources(bundle, AuditEvent)
    expect(bundle.total == 1 and len(events) == 1, "one unscheduled-care access")
    who = events[0].agent[0].who.identifier.value
    expect(who == ED, f"at {who}, {events[0].recorded}")
    _, bundle = ed.search("AuditEvent", mother, history)
    expect(bundle.total == 0, "the silent read is not an unscheduled-care access")

    print("5. an invalid NHS number")
    bad = child[:9] + str((int(child[9]) + 1) % 10)
    r = ed.get("CareTeam", {"patient:identifier": f"{NHS_SYSTEM}|{bad}"}, notifying | {"X-Request-ID": "bad-1"})
    oo = outcome(r, 400, "refused")
    expect(oo.issue[0].expression == ["patient:identifier"], "the issue names patient:identifier")
    expect(bad not in r.text, "the number is not echoed back")

    print("6. an unflagged person")
    _, bundle = ed.search("CareTeam", nobody, notifying | {"X-Request-ID": str(uuid.uuid4())})
    expect(bundle.total == 0 and not bundle.entry, "a Bundle with total 0, not an error")

    print("7. refusals")
    outcome(ed.get("Patient", {"identifier": f"{NHS_SYSTEM}|{child}"}), 404, "an unknown resource type")
    outcome(council.get("CareTeam", {"patient:identifier": f"{NHS_SYSTEM}|{child}"}, notifying), 403,
            "a council calling a setting's search")

    print("the FHIR example: every step saw what it should")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (Failure, requests.RequestException, subprocess.SubprocessError, ValueError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
