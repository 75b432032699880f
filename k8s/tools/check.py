#!/usr/bin/env python3
"""Offline checks of cpis's Kubernetes manifests (run by k8s/validate.sh).

Schemas are checked by real tools (kubernetes-validate for built-in kinds,
check-jsonschema for custom resources); this file only prepares their input
and checks what is this project's own policy. The facts the policy relies
on are read from the Rust sources, not restated here: the services and
their health names (SERVICE_NAME in crates/cpis-<service>/src/lib.rs), the
environment variables the binary reads (clap `env = "..."` and
`std::env::var("...")` in src/ and crates/), and which methods are internal
and who alone may call them (INTERNAL_METHODS and POLICY in
crates/cpis-runtime/src/authz.rs).

  check.py lint FILE...
      Every YAML source parses, with no duplicate keys (which YAML parsers,
      kubectl among them, otherwise resolve silently: the last one wins).
  check.py split --schema-dir DIR RENDERED OUTDIR
      Writes the built-in objects of a rendering to OUTDIR/builtin.yaml and
      each custom resource to its own file, and prints one line per custom
      resource: `SCHEMA FILE` (SCHEMA: a copy of DIR's, with Go-only regex
      syntax made Python's). A custom resource with no schema in DIR is an
      error (every custom resource must be validated).
  check.py policy --profile base|dev|prod --repo ROOT RENDERED
      The deployment's own rules (below). Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from urllib.parse import urlparse

import yaml

CPIS_BINARY = "/usr/local/bin/cpis"
PLACEHOLDERS = [r"example\.org", r"sha256:0{64}"]


# ------------------------------------------------------------------ facts from the code


class Facts:
    """What the manifests must agree with, read from the Rust sources."""

    def __init__(self, root: str) -> None:
        self.root = root
        sources = {}
        for top in ("src", "crates"):
            for dirpath, _, files in os.walk(os.path.join(root, top)):
                for f in files:
                    if f.endswith(".rs"):
                        path = os.path.join(dirpath, f)
                        with open(path, encoding="utf-8") as fh:
                            sources[os.path.relpath(path, root)] = fh.read()
        self.sources = sources
        # The services: a crate cpis-<name> exporting SERVICE_NAME.
        self.services: dict[str, str] = {}
        for path, text in sources.items():
            m = re.match(r"crates/cpis-([a-z]+)/src/lib\.rs$", path)
            found = re.search(r'pub const SERVICE_NAME: &str = "([^"]+)"', text)
            if m and found:
                self.services[m.group(1)] = found.group(1)
        # Environment variables the binary reads.
        env = set()
        for text in sources.values():
            env |= set(re.findall(r'\benv\s*=\s*"([A-Z][A-Z0-9_]*)"', text))
            env |= set(re.findall(r'env::var(?:_os)?\(\s*"([A-Z][A-Z0-9_]*)"', text))
            if "EnvFilter::try_from_default_env" in text or "EnvFilter::from_default_env" in text:
                env.add("RUST_LOG")
        self.env = env
        # OTEL_*: the OpenTelemetry SDK reads the standard variables itself.
        self.reads_otel = any("opentelemetry_sdk" in t for t in sources.values())
        # Internal methods and their only callers.
        authz = sources.get("crates/cpis-runtime/src/authz.rs", "")
        internal = re.search(r"INTERNAL_METHODS: &\[&str\]\s*=\s*&\[(.*?)\];", authz, re.S)
        self.internal: dict[str, set[str]] = {}
        for method in re.findall(r'"([^"]+)"', internal.group(1) if internal else ""):
            health = method.strip("/").split("/")[0]
            callee = next((n for n, h in self.services.items() if h == health), None)
            rule = re.search(re.escape(f'("{method}"') + r",\s*&\[(.*?)\]\)", authz)
            callers = set(re.findall(r"ServiceName::([A-Za-z]+)", rule.group(1))) if rule else set()
            if callee:
                self.internal.setdefault(callee, set()).update(c.lower() for c in callers)

    def reads(self, var: str) -> bool:
        return var in self.env or (self.reads_otel and var.startswith("OTEL_"))

    def problems(self) -> list[str]:
        out = []
        if not self.services:
            out.append("no service found in crates/cpis-*/src/lib.rs (SERVICE_NAME)")
        if not self.internal:
            out.append("no internal methods found in crates/cpis-runtime/src/authz.rs")
        if "CPIS_LISTEN" not in self.env:
            out.append("the sources read no CPIS_LISTEN: the environment contract could not be read")
        return out


# ------------------------------------------------------------------ helpers


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.passed = 0

    def check(self, ok, message: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.errors.append(message)
        return bool(ok)


def load(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def ident(obj: dict) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def builtin(obj: dict) -> bool:
    """Kubernetes' own API groups: the core group, dot-less groups (apps,
    policy, autoscaling, ...) and *.k8s.io. Anything else is a custom
    resource."""
    api = obj.get("apiVersion", "")
    group = api.rpartition("/")[0]
    return group == "" or "." not in group or group.endswith(".k8s.io")


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
            env[var["name"]] = ("secret", ref["name"], ref["key"]) if ref else ("other",)
    return env


def secret_file(path: str, container: dict, volumes: dict) -> tuple[str, str] | None:
    """(Secret name, key) behind a file path in a container, or None."""
    directory, _, base = path.rpartition("/")
    for m in container.get("volumeMounts") or []:
        if m["mountPath"].rstrip("/") != directory or "subPath" in m:
            continue
        secret = (volumes.get(m["name"]) or {}).get("secret")
        if not secret:
            return None
        items = secret.get("items")
        if items is None:
            return secret["secretName"], base
        for item in items:
            if item["path"] == base:
                return secret["secretName"], item["key"]
    return None


# ------------------------------------------------------------------ split


def portable_schema(schema: str, outdir: str) -> str:
    """The schema, with its `pattern`s in Python's regex syntax where Go's
    differs: the operators' schemas come from Go CRDs, where an inline flag
    may follow an anchor (`^(?i)(abort|warn)?$`), which Python refuses (and
    so check-jsonschema refuses the whole schema). Moving the flag to the
    front means the same. Returns the path of the copy."""
    import json

    with open(schema, encoding="utf-8") as f:
        doc = json.load(f)

    def fix(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "pattern" and isinstance(v, str):
                    flags = "".join(re.findall(r"\(\?([aiLmsux]+)\)", v))
                    if flags and not v.startswith("(?"):
                        node[k] = f"(?{flags})" + re.sub(r"\(\?[aiLmsux]+\)", "", v)
                else:
                    fix(v)
        elif isinstance(node, list):
            for v in node:
                fix(v)

    fix(doc)
    os.makedirs(outdir, exist_ok=True)
    group = os.path.basename(os.path.dirname(schema))
    copy = os.path.join(outdir, f"{group}_{os.path.basename(schema)}")
    with open(copy, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    return copy


def cmd_split(args) -> int:
    objects = load(args.rendered)
    os.makedirs(args.outdir, exist_ok=True)
    builtins, failed = [], 0
    for i, obj in enumerate(objects):
        if builtin(obj):
            builtins.append(obj)
            continue
        group, _, version = obj["apiVersion"].rpartition("/")
        schema = os.path.join(args.schema_dir, group, f"{obj['kind'].lower()}_{version}.json")
        if not os.path.isfile(schema):
            print(f"  ERROR {ident(obj)} ({obj['apiVersion']}): no schema {schema}: every custom resource must validate")
            failed += 1
            continue
        schema = portable_schema(schema, os.path.join(args.outdir, "schemas"))
        path = os.path.join(args.outdir, f"{i:03d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(obj, f, sort_keys=False)
        print(f"{schema} {path}")
    with open(os.path.join(args.outdir, "builtin.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump_all(builtins, f, sort_keys=False)
    return 1 if failed else 0


# ------------------------------------------------------------------ policy


def hardened(obj: dict, report: Report, by_kind: dict) -> None:
    """The pod security checklist, for every workload of ours."""
    where = ident(obj)
    spec = obj["spec"]["template"]["spec"]
    psc = spec.get("securityContext") or {}
    report.check(
        spec.get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken must be false"
    )
    sa = spec.get("serviceAccountName")
    sas = by_kind.get("ServiceAccount", {})
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
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        report.check(isinstance(uid, int) and uid > 0, f"{cw}: runAsUser must be a non-root uid")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                report.check(r in (res.get(kind) or {}), f"{cw}: resources.{kind}.{r} missing")


def database_policy(by_kind: dict, profile: str, report: Report) -> tuple[str, str, str] | None:
    """The CloudNativePG cluster: TLS from a cert-manager certificate naming
    every Service, plaintext refused; in prod three synchronous instances
    and plugin backups. Returns (cluster, app Secret, CA Secret)."""
    clusters = by_kind.get("Cluster", {})
    if not report.check(len(clusters) == 1, f"one CloudNativePG Cluster expected, found {sorted(clusters)}"):
        return None
    name, cluster = next(iter(clusters.items()))
    spec, where = cluster["spec"], f"Cluster/{name}"
    ns = cluster["metadata"].get("namespace", "default")
    certs = spec.get("certificates") or {}
    tls = certs.get("serverTLSSecret")
    report.check(certs.get("serverCASecret"), f"{where}: certificates.serverCASecret must be set (the CA clients verify)")
    issued = [c for c in by_kind.get("Certificate", {}).values() if c["spec"].get("secretName") == tls]
    if report.check(len(issued) == 1, f"{where}: serverTLSSecret {tls!r} must be written by a cert-manager Certificate"):
        cs = issued[0]["spec"]
        dns = set(cs.get("dnsNames") or [])
        for svc in ("rw", "ro", "r"):
            for host in (f"{name}-{svc}", f"{name}-{svc}.{ns}", f"{name}-{svc}.{ns}.svc", f"{name}-{svc}.{ns}.svc.cluster.local"):
                report.check(host in dns, f"{ident(issued[0])}: dnsNames must include {host} (verify-full)")
        report.check("server auth" in (cs.get("usages") or []), f"{ident(issued[0])}: usages must include server auth")
        report.check(
            "cnpg.io/reload" in ((cs.get("secretTemplate") or {}).get("labels") or {}),
            f"{ident(issued[0])}: secretTemplate must label the Secret cnpg.io/reload (renewals reach PostgreSQL)",
        )
    hba = (spec.get("postgresql") or {}).get("pg_hba") or []
    report.check(
        any(re.match(r"^hostnossl\s+all\s+all\s+\S+\s+reject$", line) for line in hba),
        f"{where}: pg_hba must reject every non-TLS connection (hostnossl all all all reject)",
    )
    report.check(not (spec.get("backup") or {}).get("barmanObjectStore"), f"{where}: the in-tree barmanObjectStore is deprecated: use the barman-cloud plugin")
    if profile == "prod":
        report.check(spec.get("instances", 1) >= 3, f"{where}: prod needs 3+ instances")
        sync = (spec.get("postgresql") or {}).get("synchronous") or {}
        report.check(
            sync.get("number", 0) >= 1 and sync.get("dataDurability") == "required",
            f"{where}: prod needs synchronous replication with dataDurability required (no acknowledged write lost on failover)",
        )
        archivers = [p for p in spec.get("plugins") or [] if p.get("isWALArchiver") and p.get("enabled", True)]
        if report.check(
            len(archivers) == 1 and archivers[0].get("name") == "barman-cloud.cloudnative-pg.io",
            f"{where}: prod needs the barman-cloud plugin as WAL archiver",
        ):
            store = (archivers[0].get("parameters") or {}).get("barmanObjectName")
            report.check(store in by_kind.get("ObjectStore", {}), f"{where}: ObjectStore {store!r} is not in the rendering")
        backups = [
            b
            for b in by_kind.get("ScheduledBackup", {}).values()
            if (b["spec"].get("cluster") or {}).get("name") == name
        ]
        report.check(
            any(
                b["spec"].get("method") == "plugin"
                and (b["spec"].get("pluginConfiguration") or {}).get("name") == "barman-cloud.cloudnative-pg.io"
                for b in backups
            ),
            f"{where}: prod needs a ScheduledBackup with method plugin (barman-cloud)",
        )
    return name, f"{name}-app", certs.get("serverCASecret")


def policy_check(objects: list[dict], profile: str, facts: Facts, report: Report) -> None:
    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    configmaps = by_kind.get("ConfigMap", {})
    services = by_kind.get("Service", {})
    certificates = by_kind.get("Certificate", {})
    deployments = by_kind.get("Deployment", {})
    policies = list(by_kind.get("NetworkPolicy", {}).values())

    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            hardened(obj, report, by_kind)

    database = database_policy(by_kind, profile, report)

    # Every pod, by name, with its labels and container ports; the
    # database's pods (made by the operator) by their cnpg.io/cluster label.
    pods = {}
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            tpl = obj["spec"]["template"]
            ports = {}
            for c in tpl["spec"]["containers"]:
                for p in c.get("ports") or []:
                    ports[p["containerPort"]] = p["containerPort"]
                    if "name" in p:
                        ports[p["name"]] = p["containerPort"]
            pods[obj["metadata"]["name"]] = {"labels": tpl["metadata"].get("labels") or {}, "ports": ports}
    if database:
        labels = {"cnpg.io/cluster": database[0], "cnpg.io/podRole": "instance"}
        labels.update(((by_kind["Cluster"][database[0]]["spec"].get("inheritedMetadata") or {}).get("labels")) or {})
        pods[database[0]] = {"labels": labels, "ports": {"postgresql": 5432, "metrics": 9187, "status": 8000}, "database": True}

    trust_domains = set()
    for name, health in facts.services.items():
        where = f"Deployment/{name}"
        if not report.check(name in deployments, f"{where}: missing"):
            continue
        dep = deployments[name]
        spec = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        main = [c for c in spec["containers"] if c["name"] == name]
        if not report.check(len(main) == 1, f"{where}: no container named {name}"):
            continue
        c = main[0]
        report.check(c.get("args") == ["serve", name], f"{where}: args must be ['serve', '{name}']")
        report.check(c.get("image") and not c.get("command"), f"{where}: must run the image's entrypoint (cpis)")
        env = env_of(c, configmaps, report, where)
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}

        # The environment contract: nothing the binary does not read.
        for var in env:
            if facts.reads(var):
                report.passed += 1
            else:
                report.errors.append(f"{where}: sets {var}, which `cpis` never reads (read from the sources)")
        report.check(
            not any(isinstance(v, tuple) and v[0] == "secret" for v in env.values()),
            f"{where}: no Secret as an environment variable (mount it as a file)",
        )

        listen = env.get("CPIS_LISTEN")
        if report.check(isinstance(listen, str), f"{where}: CPIS_LISTEN missing"):
            port = port_of(listen)
            report.check(ports.get("grpc") == port, f"{where}: container port 'grpc' must be CPIS_LISTEN's {port}")
            for probe, service in (("startupProbe", ""), ("livenessProbe", ""), ("readinessProbe", health)):
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
                report.check(args.get("--service") == service, f"{where}: {probe} must ask for health service {service!r}")
                report.check(
                    int(args.get("--timeout-secs", 3)) < c[probe].get("timeoutSeconds", 1),
                    f"{where}: {probe} timeoutSeconds must exceed the probe's own --timeout-secs",
                )

        internal = env.get("CPIS_INTERNAL_LISTEN")
        if name in facts.internal:
            if report.check(isinstance(internal, str), f"{where}: serves internal methods, so CPIS_INTERNAL_LISTEN"):
                report.check(
                    ports.get("grpc-internal") == port_of(internal),
                    f"{where}: container port 'grpc-internal' must match CPIS_INTERNAL_LISTEN",
                )
        else:
            report.check(internal is None, f"{where}: has no internal methods, so no CPIS_INTERNAL_LISTEN")
        metrics = env.get("CPIS_METRICS_LISTEN")
        if report.check(isinstance(metrics, str), f"{where}: CPIS_METRICS_LISTEN missing"):
            report.check(
                ports.get("metrics") == port_of(metrics), f"{where}: container port 'metrics' must match CPIS_METRICS_LISTEN"
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
        tls_secrets = set()
        for var, file in (("CPIS_TLS_CA", "ca.crt"), ("CPIS_TLS_CERT", "tls.crt"), ("CPIS_TLS_KEY", "tls.key")):
            path = env.get(var)
            if not report.check(isinstance(path, str), f"{where}: {var} missing"):
                continue
            found = secret_file(path, c, volumes)
            if report.check(found and found[1] == file, f"{where}: {var} must be {file} of a Secret mounted whole (no subPath)"):
                tls_secrets.add(found[0])
        certs = [crt for crt in certificates.values() if crt["spec"].get("secretName") in tls_secrets]
        if report.check(len(tls_secrets) == 1 and len(certs) == 1, f"{where}: no Certificate writes its TLS Secret {tls_secrets}"):
            cs, cw = certs[0]["spec"], ident(certs[0])
            report.check(
                cs.get("uris") == [f"spiffe://{td}/service/{name}"], f"{cw}: uris must be exactly spiffe://{td}/service/{name}"
            )
            dns = set(cs.get("dnsNames") or [])
            report.check("localhost" in dns, f"{cw}: dnsNames must include localhost (the exec probes)")
            for usage in ("server auth", "client auth"):
                report.check(usage in (cs.get("usages") or []), f"{cw}: usages must include {usage}")
            pk = cs.get("privateKey") or {}
            report.check(pk.get("rotationPolicy") == "Always", f"{cw}: rotationPolicy must be Always")
            report.check("renewBefore" in cs, f"{cw}: renewBefore must be set (rotation before expiry)")
            labels = dep["spec"]["template"]["metadata"]["labels"]
            exposed = [s for s in services.values() if s["spec"].get("selector") and selector_matches({"matchLabels": s["spec"]["selector"]}, labels)]
            report.check(exposed, f"{where}: no Service selects it")
            for svc in exposed:
                sname, ns = svc["metadata"]["name"], svc["metadata"].get("namespace", "default")
                for dnsname in (sname, f"{sname}.{ns}", f"{sname}.{ns}.svc", f"{sname}.{ns}.svc.cluster.local"):
                    report.check(dnsname in dns, f"{cw}: dnsNames must include {dnsname}")
                for sp in svc["spec"]["ports"]:
                    target = sp.get("targetPort", sp["port"])
                    report.check(target in ports or target in ports.values(), f"Service/{sname}: targetPort {target} is not a port of {name}")

        # Database: the URL from the operator's Secret as a file, TLS
        # verify-full against the cluster's CA; the migrate step the same.
        def database_env(ctr: dict, cw: str) -> tuple:
            e = env_of(ctr, configmaps, report, cw)
            report.check("DATABASE_URL" not in e, f"{cw}: DATABASE_URL must not be set (DATABASE_URL_FILE)")
            url_file = e.get("DATABASE_URL_FILE")
            root = e.get("PGSSLROOTCERT")
            report.check(e.get("PGSSLMODE") == "verify-full", f"{cw}: PGSSLMODE must be verify-full")
            if database:
                report.check(
                    isinstance(url_file, str) and secret_file(url_file, ctr, volumes) == (database[1], "uri"),
                    f"{cw}: DATABASE_URL_FILE must be the `uri` of the Secret {database[1]}, mounted",
                )
                report.check(
                    isinstance(root, str) and secret_file(root, ctr, volumes) == (database[2], "ca.crt"),
                    f"{cw}: PGSSLROOTCERT must be ca.crt of the Secret {database[2]}, mounted",
                )
            return url_file, root, e.get("PGSSLMODE")

        db = database_env(c, where)
        inits = [i for i in spec.get("initContainers") or [] if i.get("args") == ["migrate", name]]
        if report.check(len(inits) == 1, f"{where}: needs an init container running `cpis migrate {name}`"):
            report.check(database_env(inits[0], f"{where} init") == db, f"{where}: the migrate step must use the service's database settings")
            report.check(inits[0].get("image") == c.get("image"), f"{where}: the migrate step must use the service's image")

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

        # The callers of internal methods reach the callee's internal port.
        for callee, callers in facts.internal.items():
            if name not in callers:
                continue
            var = f"CPIS_{callee.upper()}_URL"
            url = urlparse(str(env.get(var)))
            svc = services.get(url.hostname or "")
            if report.check(url.scheme == "https" and svc is not None, f"{where}: {var} must be https:// to a Service in the rendering"):
                sp = [p for p in svc["spec"]["ports"] if p["port"] == url.port]
                callee_ports = pods.get(callee, {}).get("ports", {})
                report.check(
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
                report.check(h["spec"].get("minReplicas", 1) >= 2, f"{ident(h)}: prod minReplicas must be 2+")
            for p in pdbs:
                report.check(p["spec"].get("minAvailable") == 1, f"{ident(p)}: prod minAvailable must be 1")
            if name == "notification":
                report.check(
                    int(env.get("CPIS_MAX_CONNECTION_AGE_SECS", "0")) > 0,
                    f"{where}: prod sets a max connection age so streams rebalance",
                )
        if profile == "dev":
            report.check(dep["spec"].get("replicas") == 1, f"{where}: dev runs one replica")

    report.check(len(trust_domains) <= 1, f"the services disagree on CPIS_TRUST_DOMAIN: {sorted(trust_domains)}")
    network_policy_check(policies, pods, facts, report)
    if profile == "prod":
        report.check("Secret" not in by_kind, "prod must not commit Secrets (the platform team creates them)")
        monitoring_check(by_kind, pods, facts, report)


def monitoring_check(by_kind: dict, pods: dict, facts: Facts, report: Report) -> None:
    """Every service and the database scraped; every alert explained in
    k8s/README.md."""
    monitors = list(by_kind.get("PodMonitor", {}).values())
    for name, pod in pods.items():
        scraped = [
            m
            for m in monitors
            if selector_matches(m["spec"].get("selector"), pod["labels"])
            and any(e.get("port") in pod["ports"] for e in m["spec"].get("podMetricsEndpoints") or [])
        ]
        report.check(scraped, f"PodMonitor: nothing scrapes {name}'s metrics port")
    rules = [r for pr in by_kind.get("PrometheusRule", {}).values() for g in pr["spec"]["groups"] for r in g["rules"]]
    alerts = [r["alert"] for r in rules if "alert" in r]
    report.check(alerts, "PrometheusRule: no alerts")
    with open(os.path.join(facts.root, "k8s", "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for alert in alerts:
        report.check(re.search(rf"^\*\*`?{alert}`?\*\*", readme, re.M), f"k8s/README.md: no runbook paragraph for {alert}")


def allowed(policies: list[dict], direction: str, pod: dict, port: int) -> list:
    """The peers of every rule admitting `port` in `direction` for `pod`;
    None stands for 'any peer'. Empty when only default deny applies."""
    peers = []
    field, key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for pol in policies:
        spec = pol["spec"]
        if direction not in spec.get("policyTypes", ["Ingress"]) or not selector_matches(spec.get("podSelector"), pod["labels"]):
            continue
        for rule in spec.get(field) or []:
            rule_ports = rule.get("ports")
            if rule_ports and not any(p.get("port") in (None, port) or pod["ports"].get(p.get("port")) == port for p in rule_ports):
                continue
            peers.extend(rule.get(key) or [None])
    return peers


def network_policy_check(policies: list[dict], pods: dict, facts: Facts, report: Report) -> None:
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
            # A caller these manifests do not run (the demographics feed's
            # follower) is admitted by its name label alone.
            named = ok and (peer["podSelector"].get("matchLabels") or {}).get("app.kubernetes.io/name")
            external = ok and not reached and named in (allowed_pods - set(pods))
            report.check(
                ok and ((reached and reached <= allowed_pods) or external),
                f"NetworkPolicy: {what} must admit only {sorted(allowed_pods)} (a rule admits {peer})",
            )

    for callee, callers in facts.internal.items():
        if callee not in pods:
            continue
        port = pods[callee]["ports"].get("grpc-internal")
        only(allowed(policies, "Ingress", pods[callee], port), callers, f"{callee}'s internal port {port}")
        for caller in callers & set(pods):
            out = [
                p
                for p in allowed(policies, "Egress", pods[caller], port)
                if p and selector_matches(p.get("podSelector"), pods[callee]["labels"]) and "namespaceSelector" not in p
            ]
            report.check(out, f"NetworkPolicy: {caller} may not call {callee}'s internal port {port}")
    databases = {n for n, p in pods.items() if p.get("database")}
    for name, pod in pods.items():
        if name in facts.services:
            public = pod["ports"].get("grpc")
            report.check(None in allowed(policies, "Ingress", pod, public), f"NetworkPolicy: external clients cannot reach {name}'s public port {public}")
            db_peers = allowed(policies, "Egress", pod, 5432)
            report.check(
                db_peers and all(p and set(p) == {"podSelector"} and any(selector_matches(p["podSelector"], pods[d]["labels"]) for d in databases) for p in db_peers),
                f"NetworkPolicy: {name} must reach PostgreSQL, and only the database pods on 5432",
            )
            for other in facts.services:
                if other != name and other in pods:
                    p = pods[other]["ports"].get("grpc")
                    peers = [x for x in allowed(policies, "Egress", pod, p) if x is None or selector_matches(x.get("podSelector"), pods[other]["labels"])]
                    report.check(not peers, f"NetworkPolicy: {name} should not call {other}'s public port")
        report.check(allowed(policies, "Egress", pod, 53), f"NetworkPolicy: {name} cannot resolve DNS")
        if pod.get("database"):
            only(allowed(policies, "Ingress", pod, 5432), set(facts.services) | {name}, "PostgreSQL (5432)")


# ------------------------------------------------------------------ main


def cmd_policy(args) -> int:
    facts = Facts(args.repo)
    report = Report()
    for problem in facts.problems():
        report.errors.append(f"reading the sources: {problem}")
    objects = load(args.rendered)
    policy_check(objects, args.profile, facts, report)
    if args.profile == "prod":
        with open(args.rendered, encoding="utf-8") as f:
            text = f.read()
        found = sorted({m.group(0) for pat in PLACEHOLDERS for m in re.finditer(pat, text)})
        if found:
            print(f"  note: placeholders to replace before a real apply: {', '.join(found)}")
    for note in dict.fromkeys(report.notes):
        print(f"  note: {note}")
    print(
        f"  {args.profile}: {len(objects)} objects; services read from the sources: {sorted(facts.services)}; "
        f"rules: {report.passed} checks passed, {len(report.errors)} failed"
    )
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    lint = sub.add_parser("lint")
    lint.add_argument("files", nargs="+")
    lint.set_defaults(func=cmd_lint)
    split = sub.add_parser("split")
    split.add_argument("--schema-dir", required=True)
    split.add_argument("rendered")
    split.add_argument("outdir")
    split.set_defaults(func=cmd_split)
    policy = sub.add_parser("policy")
    policy.add_argument("--profile", choices=["base", "dev", "prod"], required=True)
    policy.add_argument("--repo", required=True)
    policy.add_argument("rendered")
    policy.set_defaults(func=cmd_policy)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
