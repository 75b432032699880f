#!/usr/bin/env python3
"""Offline checks of rendered cpis manifests (run by k8s/validate.sh).

  check.py validate --profile base|dev|prod|examples --k8s-version V [...] FILE
      1. schema: every built-in object against the Kubernetes OpenAPI schemas
         shipped by kubernetes-validate, strictly (unknown fields are errors),
         for each --k8s-version; cert-manager objects (custom resources, which
         kubernetes-validate has no schema for) against the fields and values
         cert-manager's v1 API accepts; any other kind is an error;
      2. policy: the rules this deployment promises (hardened pods, exec
         probes on the right ports and health names, certificates matching
         the trust domain and the DNS names in use, drain shorter than the
         grace period, a migration init step, HPA + PDB + Service per service,
         network policies that let only Attendance reach the internal ports
         and only the services reach PostgreSQL), plus per-profile rules
         (prod: 2+ replicas, spread, digests, no committed Secrets).
  check.py compare A B
      The same objects in two renderings (kustomize_lite against kustomize).
  check.py lint FILE...
      Every YAML source parses, with no duplicate keys (which YAML parsers,
      kubectl among them, otherwise resolve silently: the last one wins).

Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import re
import sys
from urllib.parse import urlparse

import yaml

SERVICES = {
    "registry": "cpis.registry.v1.RegistryService",
    "attendance": "cpis.attendance.v1.AttendanceService",
    "notification": "cpis.notification.v1.NotificationService",
}
# Internal ports: which service serves one, and who alone may call it.
INTERNAL = {"registry": "attendance", "notification": "attendance"}
CPIS_BINARY = "/usr/local/bin/cpis"
PLACEHOLDERS = [r"example\.org", r"192\.0\.2\.", r"sha256:0{64}"]


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.passed = 0

    def check(self, ok: bool, message: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.errors.append(message)
        return ok


def load(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def ident(obj: dict) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


# ------------------------------------------------------------------ schema


def schema_check(objects: list[dict], versions: list[str], report: Report) -> dict:
    from kubernetes_validate import utils as kv

    counts = {"builtin": 0, "cert-manager": 0}
    for obj in objects:
        api = obj.get("apiVersion", "")
        if api.startswith("cert-manager.io/"):
            counts["cert-manager"] += 1
            for problem in cert_manager_problems(obj):
                report.errors.append(f"{ident(obj)}: {problem}")
            report.passed += 1
            continue
        counts["builtin"] += 1
        for version in versions:
            try:
                kv.validate(obj, version, strict=True)
                report.passed += 1
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                report.errors.append(
                    f"{ident(obj)}: invalid against Kubernetes {version} (strict): {path}: {e.message}"
                )
            except kv.SchemaNotFoundError as e:
                report.errors.append(f"{ident(obj)}: {e.message} (no schema: not a kind this project expects)")
            except kv.VersionNotSupportedError:
                report.errors.append(f"kubernetes-validate cannot validate against Kubernetes {version}")
                return counts
    return counts


GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
USAGES = {
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
}
CERT_FIELDS = {
    "secretName",
    "secretTemplate",
    "issuerRef",
    "commonName",
    "dnsNames",
    "uris",
    "ipAddresses",
    "emailAddresses",
    "otherNames",
    "literalSubject",
    "subject",
    "duration",
    "renewBefore",
    "renewBeforePercentage",
    "revisionHistoryLimit",
    "privateKey",
    "usages",
    "isCA",
    "keystores",
    "encodeUsagesInRequest",
    "additionalOutputFormats",
    "nameConstraints",
    "signatureAlgorithm",
}
ISSUER_TYPES = {"ca", "selfSigned", "acme", "vault", "venafi"}


def seconds(duration: str) -> float:
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", duration))


def cert_manager_problems(obj: dict) -> list[str]:
    """What cert-manager v1's API would reject (its CRD schema and webhook)."""
    problems = []
    kind, api = obj.get("kind"), obj.get("apiVersion")
    if api != "cert-manager.io/v1":
        return [f"apiVersion {api} (only cert-manager.io/v1 is served)"]
    unknown_top = set(obj) - {"apiVersion", "kind", "metadata", "spec"}
    if unknown_top:
        problems.append(f"unknown fields {sorted(unknown_top)}")
    if not (obj.get("metadata") or {}).get("name"):
        problems.append("metadata.name missing")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return problems + ["spec missing"]

    def issuer_ref(ref):
        if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
            problems.append("spec.issuerRef.name missing")
            return
        if set(ref) - {"name", "kind", "group"}:
            problems.append(f"spec.issuerRef: unknown fields {sorted(set(ref) - {'name', 'kind', 'group'})}")
        if ref.get("group", "cert-manager.io") == "cert-manager.io" and ref.get("kind", "Issuer") not in (
            "Issuer",
            "ClusterIssuer",
        ):
            problems.append("spec.issuerRef.kind must be Issuer or ClusterIssuer")

    if kind == "Certificate":
        unknown = set(spec) - CERT_FIELDS
        if unknown:
            problems.append(f"spec: unknown fields {sorted(unknown)}")
        if not isinstance(spec.get("secretName"), str):
            problems.append("spec.secretName missing")
        issuer_ref(spec.get("issuerRef"))
        if not any(
            spec.get(k)
            for k in ("commonName", "dnsNames", "uris", "ipAddresses", "emailAddresses", "otherNames", "literalSubject")
        ):
            problems.append("at least one of commonName, dnsNames, uris, ipAddresses, emailAddresses is required")
        for key in ("dnsNames", "uris", "ipAddresses", "usages"):
            if key in spec and not (isinstance(spec[key], list) and all(isinstance(v, str) for v in spec[key])):
                problems.append(f"spec.{key} must be a list of strings")
        for uri in spec.get("uris") or []:
            if not re.match(r"^[a-z][a-z0-9+.-]*://", uri):
                problems.append(f"spec.uris: {uri!r} is not a URI")
        for name in ("duration", "renewBefore"):
            if name in spec and not (isinstance(spec[name], str) and GO_DURATION.match(spec[name])):
                problems.append(f"spec.{name}: {spec.get(name)!r} is not a Go duration")
        if (
            "duration" in spec
            and "renewBefore" in spec
            and GO_DURATION.match(str(spec["duration"]))
            and GO_DURATION.match(str(spec["renewBefore"]))
        ):
            if seconds(spec["renewBefore"]) >= seconds(spec["duration"]):
                problems.append("spec.renewBefore must be shorter than spec.duration")
            if seconds(spec["duration"]) < 3600:
                problems.append("spec.duration must be at least 1h")
        for usage in spec.get("usages") or []:
            if usage not in USAGES:
                problems.append(f"spec.usages: unknown usage {usage!r}")
        pk = spec.get("privateKey") or {}
        if set(pk) - {"algorithm", "size", "encoding", "rotationPolicy"}:
            problems.append(
                f"spec.privateKey: unknown fields {sorted(set(pk) - {'algorithm', 'size', 'encoding', 'rotationPolicy'})}"
            )
        if pk.get("algorithm", "RSA") not in ("RSA", "ECDSA", "Ed25519"):
            problems.append("spec.privateKey.algorithm must be RSA, ECDSA or Ed25519")
        if pk.get("algorithm") == "ECDSA" and pk.get("size", 256) not in (256, 384, 521):
            problems.append("spec.privateKey.size for ECDSA must be 256, 384 or 521")
        if pk.get("encoding", "PKCS1") not in ("PKCS1", "PKCS8"):
            problems.append("spec.privateKey.encoding must be PKCS1 or PKCS8")
        if pk.get("rotationPolicy", "Always") not in ("Never", "Always"):
            problems.append("spec.privateKey.rotationPolicy must be Never or Always")
    elif kind in ("Issuer", "ClusterIssuer"):
        types = set(spec) & ISSUER_TYPES
        if len(types) != 1 or set(spec) - ISSUER_TYPES:
            problems.append(f"spec must hold exactly one issuer type of {sorted(ISSUER_TYPES)}")
        if "ca" in spec and not isinstance((spec["ca"] or {}).get("secretName"), str):
            problems.append("spec.ca.secretName missing")
        if "selfSigned" in spec and not isinstance(spec["selfSigned"], dict):
            problems.append("spec.selfSigned must be a mapping")
    elif kind == "CertificateRequest":
        if not isinstance(spec.get("request"), str):
            problems.append("spec.request missing")
        issuer_ref(spec.get("issuerRef"))
    else:
        problems.append(f"unexpected cert-manager kind {kind}")
    return problems


# ------------------------------------------------------------------ policy


def selector_matches(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def env_of(container: dict, configmaps: dict, report: Report, where: str) -> dict:
    """A container's environment: plain values, ConfigMap values, and
    ("secret", name, key) for Secret references."""
    env = {}
    for ref in container.get("envFrom") or []:
        name = (ref.get("configMapRef") or {}).get("name")
        if report.check(name in configmaps, f"{where}: envFrom ConfigMap {name} is not in the rendering"):
            env.update(configmaps[name].get("data") or {})
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                env[var["name"]] = ("secret", ref["name"], ref["key"])
            else:
                env[var["name"]] = ("other",)
    return env


def pod_template(obj: dict) -> dict | None:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]
    return None


def hardened(obj: dict, report: Report, objects_by_kind: dict) -> None:
    """The pod security checklist of issue 6, for every workload."""
    where = ident(obj)
    spec = obj["spec"]["template"]["spec"]
    psc = spec.get("securityContext") or {}
    report.check(
        spec.get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken must be false"
    )
    sa = spec.get("serviceAccountName")
    sas = objects_by_kind.get("ServiceAccount", {})
    if report.check(sa in sas, f"{where}: its ServiceAccount {sa!r} is not in the rendering"):
        report.check(
            sas[sa].get("automountServiceAccountToken") is False,
            f"ServiceAccount/{sa}: automountServiceAccountToken must be false",
        )
    report.check(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot must be true")
    report.check(
        (psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
        f"{where}: pod seccompProfile must be RuntimeDefault",
    )
    for c in (spec.get("initContainers") or []) + spec["containers"]:
        cw = f"{where} container {c['name']}"
        sc = c.get("securityContext") or {}
        report.check(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation must be false")
        report.check(sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem must be true")
        report.check(sc.get("privileged") in (None, False), f"{cw}: must not be privileged")
        report.check("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"{cw}: capabilities must drop ALL")
        report.check(not (sc.get("capabilities") or {}).get("add"), f"{cw}: must add no capabilities")
        report.check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{cw}: runAsNonRoot must be true")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        report.check(isinstance(uid, int) and uid > 0, f"{cw}: runAsUser must be a non-root uid")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                report.check(r in (res.get(kind) or {}), f"{cw}: resources.{kind}.{r} missing")


def policy_check(objects: list[dict], profile: str, report: Report) -> None:
    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    configmaps = by_kind.get("ConfigMap", {})
    services = by_kind.get("Service", {})
    certificates = by_kind.get("Certificate", {})
    deployments = by_kind.get("Deployment", {})
    policies = list(by_kind.get("NetworkPolicy", {}).values())

    for obj in objects:
        if pod_template(obj) is not None:
            hardened(obj, report, by_kind)

    # Every pod template, by name, with its labels and container ports.
    pods = {}
    for obj in objects:
        tpl = pod_template(obj)
        if tpl is not None:
            ports = {}
            for c in tpl["spec"]["containers"]:
                for p in c.get("ports") or []:
                    ports[p["containerPort"]] = p["containerPort"]
                    if "name" in p:
                        ports[p["name"]] = p["containerPort"]
            pods[obj["metadata"]["name"]] = {"labels": tpl["metadata"].get("labels") or {}, "ports": ports}

    trust_domains = set()
    for name, health in SERVICES.items():
        where = f"Deployment/{name}"
        if not report.check(name in deployments, f"{where}: missing"):
            continue
        dep = deployments[name]
        spec = dep["spec"]["template"]["spec"]
        main = [c for c in spec["containers"] if c["name"] == name]
        if not report.check(len(main) == 1, f"{where}: no container named {name}"):
            continue
        c = main[0]
        report.check(c.get("args") == ["serve", name], f"{where}: args must be ['serve', '{name}']")
        report.check(c.get("image") and not c.get("command"), f"{where}: must run the image's entrypoint (cpis)")
        report.check((spec.get("securityContext") or {}).get("runAsUser") == 65532, f"{where}: must run as uid 65532")
        env = env_of(c, configmaps, report, where)
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}

        listen = env.get("CPIS_LISTEN")
        if report.check(isinstance(listen, str), f"{where}: CPIS_LISTEN missing"):
            port = port_of(listen)
            report.check(ports.get("grpc") == port, f"{where}: container port 'grpc' must be CPIS_LISTEN's {port}")
            expected = {
                "startupProbe": "",
                "livenessProbe": "",
                "readinessProbe": health,
            }
            for probe, service in expected.items():
                cmd = ((c.get(probe) or {}).get("exec") or {}).get("command")
                if not report.check(
                    isinstance(cmd, list),
                    f"{where}: {probe} must be an exec probe (kubelet's gRPC probe has no client certificate)",
                ):
                    continue
                args = dict(zip(cmd[2::2], cmd[3::2]))
                report.check(cmd[:2] == [CPIS_BINARY, "probe"], f"{where}: {probe} must run `cpis probe`")
                report.check(
                    args.get("--endpoint") == f"https://localhost:{port}",
                    f"{where}: {probe} must check https://localhost:{port}",
                )
                report.check(
                    args.get("--service") == service, f"{where}: {probe} must ask for health service {service!r}"
                )
                timeout = int(args.get("--timeout-secs", 3))
                report.check(
                    timeout < c[probe].get("timeoutSeconds", 1),
                    f"{where}: {probe} timeoutSeconds must exceed the probe's own --timeout-secs",
                )

        internal = env.get("CPIS_INTERNAL_LISTEN")
        if name in INTERNAL:
            if report.check(isinstance(internal, str), f"{where}: CPIS_INTERNAL_LISTEN missing"):
                report.check(
                    ports.get("grpc-internal") == port_of(internal),
                    f"{where}: container port 'grpc-internal' must match CPIS_INTERNAL_LISTEN",
                )
        else:
            report.check(internal is None, f"{where}: has no internal methods, so no CPIS_INTERNAL_LISTEN")
        metrics = env.get("CPIS_METRICS_LISTEN")
        if report.check(isinstance(metrics, str), f"{where}: CPIS_METRICS_LISTEN missing"):
            ann = dep["spec"]["template"]["metadata"].get("annotations") or {}
            report.check(
                ports.get("metrics") == port_of(metrics),
                f"{where}: container port 'metrics' must match CPIS_METRICS_LISTEN",
            )
            report.check(ann.get("prometheus.io/scrape") == "true", f"{where}: prometheus.io/scrape annotation missing")
            report.check(
                ann.get("prometheus.io/port") == str(port_of(metrics)),
                f"{where}: prometheus.io/port must be the metrics port",
            )

        # Draining: readiness flips at SIGTERM, listeners close after the drain.
        drain = env.get("CPIS_DRAIN_SECS")
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if report.check(isinstance(drain, str) and drain.isdigit(), f"{where}: CPIS_DRAIN_SECS missing"):
            report.check(
                int(drain) + 15 <= grace,
                f"{where}: CPIS_DRAIN_SECS ({drain}) + 15 s must fit in terminationGracePeriodSeconds ({grace})",
            )

        # TLS: the Secret of the service's Certificate, mounted whole.
        td = env.get("CPIS_TRUST_DOMAIN", "cpis.local")
        trust_domains.add(td)
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        tls_secret = None
        for var, file in (("CPIS_TLS_CA", "ca.crt"), ("CPIS_TLS_CERT", "tls.crt"), ("CPIS_TLS_KEY", "tls.key")):
            path = env.get(var)
            if not report.check(isinstance(path, str), f"{where}: {var} missing"):
                continue
            directory, _, base = path.rpartition("/")
            report.check(base == file, f"{where}: {var} must name {file} (the key cert-manager writes)")
            mount = mounts.get(directory)
            if report.check(mount is not None, f"{where}: {var} is not on a mounted volume"):
                report.check(
                    "subPath" not in mount,
                    f"{where}: the TLS volume must not use subPath (renewals would not reach the pod)",
                )
                secret = (volumes.get(mount["name"], {}).get("secret") or {}).get("secretName")
                report.check(secret is not None, f"{where}: {var} must come from a Secret volume")
                tls_secret = secret
        certs = [crt for crt in certificates.values() if crt["spec"].get("secretName") == tls_secret]
        if report.check(len(certs) == 1, f"{where}: no Certificate writes its TLS Secret {tls_secret}"):
            cs = certs[0]["spec"]
            cw = f"Certificate/{certs[0]['metadata']['name']}"
            report.check(
                cs.get("uris") == [f"spiffe://{td}/service/{name}"],
                f"{cw}: uris must be exactly spiffe://{td}/service/{name}",
            )
            dns = set(cs.get("dnsNames") or [])
            report.check("localhost" in dns, f"{cw}: dnsNames must include localhost (the exec probes)")
            for usage in ("server auth", "client auth"):
                report.check(usage in (cs.get("usages") or []), f"{cw}: usages must include {usage}")
            pk = cs.get("privateKey") or {}
            report.check(
                (pk.get("algorithm"), pk.get("size"), pk.get("encoding")) == ("ECDSA", 256, "PKCS8"),
                f"{cw}: key must be ECDSA P-256, PKCS#8",
            )
            report.check(pk.get("rotationPolicy") == "Always", f"{cw}: rotationPolicy must be Always")
            report.check("renewBefore" in cs, f"{cw}: renewBefore must be set (rotation before expiry)")
            labels = dep["spec"]["template"]["metadata"]["labels"]
            exposed = [
                s
                for s in services.values()
                if s["spec"].get("selector") and selector_matches({"matchLabels": s["spec"]["selector"]}, labels)
            ]
            report.check(exposed, f"{where}: no Service selects it")
            for svc in exposed:
                sname = svc["metadata"]["name"]
                ns = svc["metadata"].get("namespace", "default")
                for dnsname in (sname, f"{sname}.{ns}", f"{sname}.{ns}.svc", f"{sname}.{ns}.svc.cluster.local"):
                    report.check(dnsname in dns, f"{cw}: dnsNames must include {dnsname}")
                for sp in svc["spec"]["ports"]:
                    target = sp.get("targetPort", sp["port"])
                    report.check(
                        target in ports or target in ports.values(),
                        f"Service/{sname}: targetPort {target} is not a port of {name}",
                    )

        # Database: from a Secret, migrated by an init step with the same URL.
        db = env.get("DATABASE_URL")
        report.check(isinstance(db, tuple) and db[0] == "secret", f"{where}: DATABASE_URL must come from a Secret")
        inits = [i for i in spec.get("initContainers") or [] if i.get("args") == ["migrate", name]]
        if report.check(len(inits) == 1, f"{where}: needs an init container running `cpis migrate {name}`"):
            init_env = env_of(inits[0], configmaps, report, where)
            report.check(
                init_env.get("DATABASE_URL") == db, f"{where}: the migrate step must use the service's DATABASE_URL"
            )
            report.check(
                inits[0].get("image") == c.get("image"), f"{where}: the migrate step must use the service's image"
            )

        # Availability objects.
        hpas = [
            h
            for h in by_kind.get("HorizontalPodAutoscaler", {}).values()
            if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        ]
        report.check(len(hpas) == 1, f"{where}: needs one HorizontalPodAutoscaler")
        pdbs = [
            p
            for p in by_kind.get("PodDisruptionBudget", {}).values()
            if selector_matches(p["spec"].get("selector"), dep["spec"]["template"]["metadata"]["labels"])
        ]
        report.check(len(pdbs) == 1, f"{where}: needs one PodDisruptionBudget")

        if name == "attendance":
            for var, callee in (("CPIS_REGISTRY_URL", "registry"), ("CPIS_NOTIFICATION_URL", "notification")):
                url = urlparse(str(env.get(var)))
                svc = services.get(url.hostname or "")
                ok = report.check(
                    url.scheme == "https" and svc is not None,
                    f"{where}: {var} must be https:// to a Service in the rendering",
                )
                if ok:
                    sp = [p for p in svc["spec"]["ports"] if p["port"] == url.port]
                    callee_ports = pods.get(callee, {}).get("ports", {})
                    ok = report.check(
                        len(sp) == 1 and callee_ports.get(sp[0].get("targetPort")) == callee_ports.get("grpc-internal"),
                        f"{where}: {var} must reach {callee}'s internal port",
                    )
                    crt = certificates.get(callee)
                    report.check(
                        crt is not None and url.hostname in (crt["spec"].get("dnsNames") or []),
                        f"{where}: {callee}'s certificate must name {url.hostname}",
                    )

        if profile == "prod":
            report.check(dep["spec"].get("replicas", 1) >= 2, f"{where}: prod needs 2+ replicas")
            report.check(spec.get("topologySpreadConstraints"), f"{where}: prod needs topologySpreadConstraints")
            for ctr in spec["containers"] + (spec.get("initContainers") or []):
                report.check("@sha256:" in ctr.get("image", ""), f"{where}: prod images must be pinned by digest")
            for h in hpas:
                report.check(
                    h["spec"].get("minReplicas", 1) >= 2, f"HorizontalPodAutoscaler/{name}: prod minReplicas must be 2+"
                )
            for p in pdbs:
                report.check(
                    p["spec"].get("minAvailable") == 1,
                    f"PodDisruptionBudget/{p['metadata']['name']}: prod minAvailable must be 1",
                )
            if name == "notification":
                report.check(
                    int(env.get("CPIS_MAX_CONNECTION_AGE_SECS", "0")) > 0,
                    f"{where}: prod sets a max connection age so streams rebalance",
                )
        if profile == "dev":
            report.check(dep["spec"].get("replicas") == 1, f"{where}: dev runs one replica")

    report.check(len(trust_domains) <= 1, f"the services disagree on CPIS_TRUST_DOMAIN: {sorted(trust_domains)}")
    network_policy_check(policies, pods, profile, report)

    if profile == "prod":
        report.check("Secret" not in by_kind, "prod must not commit Secrets (the platform team creates them)")
    if profile == "dev":
        secret = by_kind.get("Secret", {}).get("cpis-database")
        if report.check(secret is not None, "dev: Secret cpis-database missing"):
            for name in SERVICES:
                report.check(
                    f"{name}-url" in (secret.get("stringData") or {}), f"dev: Secret cpis-database lacks {name}-url"
                )


def allowed(policies: list[dict], direction: str, pod: dict, port: int) -> list:
    """The peers of every rule admitting `port` in `direction` for `pod`;
    None stands for 'any peer'. Empty when only default deny applies."""
    peers = []
    field, key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for pol in policies:
        spec = pol["spec"]
        if direction not in spec.get("policyTypes", ["Ingress"]) or not selector_matches(
            spec.get("podSelector"), pod["labels"]
        ):
            continue
        for rule in spec.get(field) or []:
            rule_ports = rule.get("ports")
            if rule_ports and not any(
                p.get("port") in (None, port) or pod["ports"].get(p.get("port")) == port for p in rule_ports
            ):
                continue
            peers.extend(rule.get(key) or [None])
    return peers


def network_policy_check(policies: list[dict], pods: dict, profile: str, report: Report) -> None:
    deny = [
        p
        for p in policies
        if p["spec"].get("podSelector") == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    report.check(deny, "NetworkPolicy: a default deny of ingress and egress for every pod is missing")

    def only(peers: list, allowed_pods: set, what: str) -> None:
        if not report.check(peers, f"NetworkPolicy: nothing admits {what}"):
            return
        for peer in peers:
            ok = peer is not None and set(peer) == {"podSelector"}
            reached = {n for n, p in pods.items() if ok and selector_matches(peer["podSelector"], p["labels"])}
            report.check(
                ok and reached == allowed_pods,
                f"NetworkPolicy: {what} must admit only {sorted(allowed_pods)} (a rule admits {peer})",
            )

    for callee, caller in INTERNAL.items():
        if callee not in pods or caller not in pods:
            continue
        port = pods[callee]["ports"].get("grpc-internal")
        only(allowed(policies, "Ingress", pods[callee], port), {caller}, f"{callee}'s internal port {port}")
        out = [
            p
            for p in allowed(policies, "Egress", pods[caller], port)
            if p and selector_matches(p.get("podSelector"), pods[callee]["labels"]) and "namespaceSelector" not in p
        ]
        report.check(out, f"NetworkPolicy: {caller} may not call {callee}'s internal port {port}")
    for name, pod in pods.items():
        if name in SERVICES:
            public = pod["ports"].get("grpc")
            report.check(
                None in allowed(policies, "Ingress", pod, public),
                f"NetworkPolicy: external clients cannot reach {name}'s public port {public}",
            )
            report.check(allowed(policies, "Egress", pod, 5432), f"NetworkPolicy: {name} cannot reach PostgreSQL")
            for other in SERVICES:
                if other != name and other in pods:
                    # The other services' public ports are reached from outside, never pod to pod.
                    p = pods[other]["ports"].get("grpc")
                    peers = [
                        x
                        for x in allowed(policies, "Egress", pod, p)
                        if x is None or selector_matches(x.get("podSelector"), pods[other]["labels"])
                    ]
                    report.check(not peers, f"NetworkPolicy: {name} should not call {other}'s public port")
        report.check(allowed(policies, "Egress", pod, 53), f"NetworkPolicy: {name} cannot resolve DNS")
        if pod["labels"].get("app.kubernetes.io/component") == "database":
            only(allowed(policies, "Ingress", pod, 5432), set(SERVICES), "PostgreSQL (5432)")
    if profile == "prod":
        for name in SERVICES:
            if name in pods:
                peers = allowed(policies, "Egress", pods[name], 5432)
                report.check(
                    all(p and set(p) == {"ipBlock"} for p in peers),
                    f"NetworkPolicy: prod {name} reaches the managed PostgreSQL by ipBlock only",
                )


# ------------------------------------------------------------------ main


def cmd_validate(args) -> int:
    objects = load(args.file)
    report = Report()
    counts = schema_check(objects, args.k8s_version, report)
    schema_errors, schema_passed = len(report.errors), report.passed
    if args.profile != "examples":
        policy_check(objects, args.profile, report)
    if args.profile == "prod":
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
        found = sorted({m.group(0) for pat in PLACEHOLDERS for m in re.finditer(pat, text)})
        if found:
            print(f"  note: placeholders to replace before a real apply: {', '.join(found)}")
    versions = " and ".join(args.k8s_version)
    summary = (
        f"  {args.profile}: {len(objects)} objects; {counts['builtin']} built-in objects checked strictly against "
        f"Kubernetes {versions}, {counts['cert-manager']} cert-manager objects against cert-manager v1's rules: "
        f"{schema_errors} schema errors"
    )
    if args.profile != "examples":
        summary += (
            f"; rules: {report.passed - schema_passed} checks passed, {len(report.errors) - schema_errors} failed"
        )
    print(summary)
    for e in dict.fromkeys(report.errors):
        print(f"  ERROR {e}")
    return 1 if report.errors else 0


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate mapping keys."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def cmd_lint(args) -> int:
    failed = 0
    for path in args.files:
        try:
            with open(path, encoding="utf-8") as f:
                list(yaml.load_all(f, Loader=StrictLoader))
        except yaml.YAMLError as e:
            print(f"  ERROR {path}: {e}")
            failed += 1
    print(f"  {len(args.files)} YAML files parsed strictly, {failed} with errors")
    return 1 if failed else 0


def cmd_compare(args) -> int:
    def index(path):
        return {
            (o["apiVersion"], o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in load(path)
        }

    a, b = index(args.a), index(args.b)
    problems = [f"only in {args.a}: {k}" for k in a.keys() - b.keys()]
    problems += [f"only in {args.b}: {k}" for k in b.keys() - a.keys()]
    problems += [f"differs: {k}" for k in a.keys() & b.keys() if a[k] != b[k]]
    for p in sorted(problems):
        print(f"  ERROR {p}")
    if not problems:
        print(f"  identical: {len(a)} objects")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate")
    v.add_argument("--profile", choices=["base", "dev", "prod", "examples"], required=True)
    v.add_argument("--k8s-version", action="append", required=True)
    v.add_argument("file")
    v.set_defaults(func=cmd_validate)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.set_defaults(func=cmd_compare)
    lint = sub.add_parser("lint")
    lint.add_argument("files", nargs="+")
    lint.set_defaults(func=cmd_lint)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
