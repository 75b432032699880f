#!/usr/bin/env python3
"""cpis from a clinical system vendor's FHIR client written to NHS England's
CP-IS FHIR R4 guides ("CP-IS API Consumer"): the same searches, the same
headers (`Authorization`, `NHSD-Session-URID`, `TraceID`,
`IsUnscheduledAccessEvent`, and nothing of cpis's own), the same elements
read from the answers (the guide's Data-mapping page). Only the base URL and
the client certificate change.

Against a running `cpis dev` (its development PKI, FHIR port = --port-base + 3),
this client

  0. as Manchester council (E08000003) registers, through the `cpis` command
     line, a child protection plan for a child, a looked-after plan that ended
     30 days ago for another child, and an unborn child protection plan for a
     mother (random NHS numbers in the 999 test range);
  1. reads the CapabilityStatement (GET /FHIR/R4/metadata);
  2. unscheduled care (the emergency department RBQ01, a nurse whose role
     carries B0107): searches CareTeam for the child with
     `IsUnscheduledAccessEvent: true`, and for the second child without the
     header (the guide: absent is unscheduled), reading plan type (SNOMED CT
     `category`), local authority (`name`), office-hours (`telecom` use work)
     and emergency duty (use mobile) numbers and the period;
  3. scheduled care (the GP practice Y01234, B0170): a silent read of the
     mother (`IsUnscheduledAccessEvent: false`), and the expected delivery
     date extension, whose definition is served at its URL;
  4. access history: AuditEvent with the guide's `_include` of the
     PractitionerRoles, showing who looked (name, role, organisation); the
     silent read is not there;
  5. errors, each an OperationOutcome with its Spine code: an invalid NHS
     number (400 INVALID_SEARCH_DATA), an invalid header (400
     PRECONDITION_FAILED), no user token (401 ACCESS_DENIED), a role without
     B0107 making a notifying read and a council's system (403 ACCESS_DENIED),
     an unknown resource type (404 UNSUPPORTED_SERVICE);
  6. an unflagged person: a Bundle with total 0.

Every response is parsed and validated with the `fhir.resources` R4B models.
It exits 0 only if every step saw what it should.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
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
from fhir.resources.R4B.practitionerrole import PractitionerRole
from fhir.resources.R4B.structuredefinition import StructureDefinition

NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
SNOMED = "http://snomed.info/sct"
SPINE = "https://fhir.nhs.uk/CodeSystem/England-SpineErrorOrWarningCode"
ROLE_PROFILE = "https://fhir.nhs.uk/Id/sds-role-profile-id"
# The guide's Interactions page: the consumer asks for who looked this way.
INCLUDE = "AuditEvent:entity-type=http://terminology.hl7.org/CodeSystem/v3-RoleClass|ASSIGNED"
# England-ChildProtectionPlan (SNOMED CT): the plan types by code.
CPP, LAC, UCPP = "342191000000101", "764841000000100", "818901000000100"
COUNCIL = "E08000003"  # Manchester
ED = "RBQ01"  # an emergency department (unscheduled care)
GP = "Y01234"  # a GP practice (scheduled care)
NURSE_ROLE_PROFILE = "555254240100"
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
    """A FHIR client presenting one identity's certificate, and its user's token."""

    def __init__(self, base: str, pki: str, kind: str, code: str, user: dict | None = None):
        self.base = base
        self.session = requests.Session()
        # REQUESTS_CA_BUNDLE and proxy variables would override the cpis CA.
        self.session.trust_env = False
        self.session.cert = (os.path.join(pki, f"{kind}-{code}.pem"), os.path.join(pki, f"{kind}-{code}-key.pem"))
        self.session.verify = os.path.join(pki, "ca.pem")
        self.session.headers["Accept"] = "application/fhir+json"
        if user:
            # The guide's user-restricted access: the person's CIS2 token and selected role.
            self.session.headers["Authorization"] = f"Bearer {user['token']}"
            self.session.headers["NHSD-Session-URID"] = user["role_id"]

    def get(self, path: str, params=None, headers=None) -> requests.Response:
        # The guide: a TraceID (a UUID) on every request.
        sent = {"TraceID": str(uuid.uuid4())} | (headers or {})
        url = path if path.startswith("https://") else f"{self.base}/{path}"
        r = self.session.get(url, params=params, headers=sent, timeout=TIMEOUT)
        ctype = r.headers.get("Content-Type", "")
        if not ctype.startswith("application/fhir+json"):
            raise Failure(f"GET {path}: content type {ctype!r}, expected application/fhir+json")
        return r

    def search(self, resource: str, nhs: str, headers=None, include: str | None = None) -> Bundle:
        params = {"patient:identifier": f"{NHS_SYSTEM}|{nhs}"} | ({"_include": include} if include else {})
        r = self.get(resource, params, headers)
        if r.status_code != 200:
            raise Failure(f"GET {resource}: HTTP {r.status_code}: {r.text}")
        bundle = Bundle.model_validate(r.json())
        expect(bundle.type == "searchset" and bundle.link[0].relation == "self"
               and bundle.link[0].url.startswith(f"{self.base}/{resource}?"), f"{resource}: a searchset with a self link")
        for e in bundle.entry or []:
            full = f"{self.base}/{e.resource.get_resource_type()}/{e.resource.id}"
            if e.fullUrl != full:
                raise Failure(f"fullUrl {e.fullUrl}, expected the absolute {full}")
        return bundle


def matches(bundle: Bundle, model, mode: str = "match"):
    """The bundle's resources of search mode `mode`, each validated with `model`."""
    return [model.model_validate(e.resource.model_dump(mode="json")) for e in (bundle.entry or [])
            if e.search and e.search.mode == mode]


def phone(team: CareTeam, use: str) -> list[str]:
    """The guide's Data-mapping: office hours where use is work, emergency duty where use is mobile."""
    return [t.value for t in (team.telecom or []) if t.use == use]


def outcome(r: requests.Response, status: int, code: str, what: str) -> OperationOutcome:
    expect(r.status_code == status, f"{what}: HTTP {r.status_code} (expected {status})")
    oo = OperationOutcome.model_validate(r.json())
    coding = oo.issue[0].details.coding[0]
    print(f"      OperationOutcome: {oo.issue[0].code} {coding.code}: {oo.issue[0].diagnostics}")
    expect(coding.system == SPINE and coding.code == code, f"{what}: Spine code {code}")
    return oo


def register(cpis: str, state_dir: str, port_base: int, child: str, child2: str, mother: str) -> None:
    today = datetime.date.today()
    days = lambda n: (today + datetime.timedelta(days=n)).isoformat()  # noqa: E731
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False, newline="") as f:
        w = csv.writer(f)
        w.writerow(["local_reference", "nhs_number", "date_of_birth", "plan_type", "start_date", "end_date",
                    "expected_delivery_date", "team_name", "office_phone", "emergency_duty_phone", "email"])
        contact = ["Manchester Children's Services Front Door", "0161 234 5000", "0161 255 8250",
                   "mash@example.gov.uk"]
        w.writerow([f"FHIR-{child[-6:]}", child, "2016-04-02", "CHILD_PROTECTION", "2025-01-10", "", ""] + contact)
        w.writerow([f"FHIR-L-{child2[-6:]}", child2, "2014-07-09", "LOOKED_AFTER", "2024-03-01", days(-30), ""]
                   + contact)
        w.writerow([f"FHIR-U-{mother[-6:]}", mother, "", "UNBORN_CHILD_PROTECTION", days(-30), "", days(60)]
                   + contact)
        path = f.name
    try:
        out = subprocess.run([cpis, "plans", "--state-dir", state_dir, "--port-base", str(port_base), "--council",
                              COUNCIL, "sync", "--csv", path, "--allow-mass-end"],
                             check=True, timeout=60, capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    print("      " + out.strip().replace("\n", "\n      "))
    expect("created 3" in out and "rejected 0" in out, "the three plans registered")


def user_token(cpis: str, state_dir: str, setting: str, name: str, activities: str, *extra: str) -> dict:
    """A development token for a person at `setting` (`cpis users token`): in
    production, the clinical system's signed-in user's CIS2 token."""
    out = subprocess.run([cpis, "users", "token", "--state-dir", state_dir, "--setting", setting, "--name", name,
                          "--activity", activities, "--json", *extra], check=True, timeout=60, capture_output=True,
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
    token = lambda *a: user_token(args.cpis, args.state_dir, *a)  # noqa: E731
    nurse = token(ED, "FHIR Example Nurse", "B0107", "--role-profile", NURSE_ROLE_PROFILE, "--job-role", "R8001")
    ed = Fhir(base, pki, "setting", ED, nurse)
    gp = Fhir(base, pki, "setting", GP, token(GP, "FHIR Example GP", "B0170"))
    council = Fhir(base, pki, "council", COUNCIL)
    child, child2, mother, nobody = (test_nhs_number() for _ in range(4))

    print("0. Manchester registers a child protection plan, an ended looked-after plan and an unborn plan")
    register(args.cpis, args.state_dir, args.port_base, child, child2, mother)

    print(f"1. GET {base}/metadata")
    cs = CapabilityStatement.model_validate(council.get("metadata").json())
    rest = cs.rest[0]
    searches = sorted(r.type for r in rest.resource if any(i.code == "search-type" for i in r.interaction or []))
    expect(cs.fhirVersion == "4.0.1" and searches == ["AuditEvent", "CareTeam"], f"FHIR 4.0.1, searches {searches}")
    includes = [i for r in rest.resource if r.type == "AuditEvent" for i in r.searchInclude or []]
    expect(INCLUDE in includes, "AuditEvent supports the guide's _include")

    print("2. unscheduled care: CareTeam searches from the emergency department")
    bundle = ed.search("CareTeam", child, {"IsUnscheduledAccessEvent": "true"})
    teams = matches(bundle, CareTeam)
    expect(bundle.total == 1 and len(teams) == 1, "a Bundle with total 1: one CareTeam")
    team = teams[0]
    coding = team.category[0].coding[0]
    print(f"      {coding.display} since {team.period.start}; {team.name}: office hours {phone(team, 'work')}, "
          f"emergency duty {phone(team, 'mobile')}")
    expect(coding.system == SNOMED and coding.code == CPP, "category: SNOMED CT, subject to child protection plan")
    expect(team.name == "Manchester Local Authority", "name: the responsible local authority")
    expect(team.subject.identifier.system == NHS_SYSTEM and team.subject.identifier.value == child, "about the child")
    expect(phone(team, "work") == ["0161 234 5000"] and phone(team, "mobile") == ["0161 255 8250"],
           "office hours use work, emergency duty use mobile")
    bundle = ed.search("CareTeam", child2)
    team = matches(bundle, CareTeam)[0]
    expect(team.category[0].coding[0].code == LAC and team.period.end is not None,
           f"header absent (unscheduled): a looked-after plan that ended on {team.period.end}")

    print("3. scheduled care: a silent read of the mother from the GP practice")
    bundle = gp.search("CareTeam", mother, {"IsUnscheduledAccessEvent": "false"})
    team = matches(bundle, CareTeam)[0]
    expect(team.category[0].coding[0].code == UCPP, "unborn child subject to child protection plan")
    edd_url = f"{base}/StructureDefinition/cpis-expected-delivery-date"
    edd = [e.valueDate for e in (team.extension or []) if e.url == edd_url]
    expect(len(edd) == 1, f"expected delivery date {edd[0] if edd else None} (an extension the guide lacks)")
    definition = StructureDefinition.model_validate(gp.get(edd_url).json())
    expect(definition.url == edd_url, "the extension's definition is served at its URL")

    print("4. access history: AuditEvent with the guide's _include (who looked)")
    bundle = ed.search("AuditEvent", child, {"IsUnscheduledAccessEvent": "true"}, include=INCLUDE)
    events, roles = matches(bundle, AuditEvent), matches(bundle, PractitionerRole, "include")
    expect(bundle.total == 1 and len(events) == 1 and len(roles) == 1, "one access, one PractitionerRole")
    event, role = events[0], roles[0]
    agents = {a.type.coding[0].code: a for a in event.agent}
    expect(event.type.code == "access" and agents["PAT"].who.identifier.value == child, "the child's record viewed")
    expect(agents["ASSIGNED"].requestor and agents["ASSIGNED"].who.reference == f"PractitionerRole/{role.id}",
           "the requestor is the included PractitionerRole")
    print(f"      {event.recorded}: {role.practitioner.display}, {role.code[0].coding[0].display}, "
          f"{role.organization.display}")
    expect(role.practitioner.display == "FHIR Example Nurse", "the verified user's name")
    expect(role.identifier[0].system == ROLE_PROFILE and role.identifier[0].value == NURSE_ROLE_PROFILE,
           "the SDS role profile id")
    expect(role.code[0].coding[0].display == "Nurse Access Role" and ED in role.organization.display,
           "the job role and the organisation")
    bundle = ed.search("AuditEvent", mother, include=INCLUDE)
    expect(bundle.total == 0, "the silent read is not an unscheduled-care access")

    print("5. errors")
    bad = child[:9] + str((int(child[9]) + 1) % 10)
    r = ed.get("CareTeam", {"patient:identifier": f"{NHS_SYSTEM}|{bad}"})
    oo = outcome(r, 400, "INVALID_SEARCH_DATA", "an invalid NHS number")
    expect(oo.issue[0].expression == ["patient:identifier"] and bad not in r.text, "named, not echoed")
    outcome(ed.get("CareTeam", {"patient:identifier": f"{NHS_SYSTEM}|{child}"}, {"IsUnscheduledAccessEvent": "maybe"}),
            400, "PRECONDITION_FAILED", "an invalid IsUnscheduledAccessEvent")
    anonymous = Fhir(base, pki, "setting", ED)
    outcome(anonymous.get("CareTeam", {"patient:identifier": f"{NHS_SYSTEM}|{child}"}), 401, "ACCESS_DENIED",
            "no user token")
    outcome(gp.get("CareTeam", {"patient:identifier": f"{NHS_SYSTEM}|{child}"}), 403, "ACCESS_DENIED",
            "a notifying read by a role without B0107")
    outcome(council.get("CareTeam", {"patient:identifier": f"{NHS_SYSTEM}|{child}"}), 403, "ACCESS_DENIED",
            "a council calling a setting's search")
    outcome(ed.get("Patient", {"identifier": f"{NHS_SYSTEM}|{child}"}), 404, "UNSUPPORTED_SERVICE",
            "an unknown resource type")

    print("6. an unflagged person")
    bundle = ed.search("CareTeam", nobody)
    expect(bundle.total == 0 and not bundle.entry, "a Bundle with total 0, not an error")

    print("the FHIR example: every step saw what it should")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (Failure, requests.RequestException, subprocess.SubprocessError, ValueError, KeyError) as e:
        print(f"FAILED: {e!r}", file=sys.stderr)
        sys.exit(1)
