// Validates docker/k8s/*.yaml without a cluster: every object against the Kubernetes
// OpenAPI schema (the npm package kubernetes-models, whose validate() checks types,
// required fields and unknown fields), then the structure fisherd relies on: gRPC
// probes on a declared port, requests and limits, every Secret key the pod reads,
// the Service selecting the pod and targeting a named port, the kustomization's list.
//
// usage: node k8s_validate.mjs NODE_MODULES_DIR MANIFEST_DIR
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [modulesDir, manifestDir] = process.argv.slice(2);
const load = (name) => import(pathToFileURL(path.join(modulesDir, name)).href);
const YAML = await load("yaml/dist/index.js");

const failures = [];
const fail = (where, message) => failures.push(`${where}: ${message}`);
const objects = [];
let kustomization = null;

for (const file of fs.readdirSync(manifestDir).filter((f) => /\.ya?ml$/.test(f)).sort()) {
  const text = fs.readFileSync(path.join(manifestDir, file), "utf8");
  for (const doc of YAML.parseAllDocuments(text)) {
    if (doc.errors.length) {
      fail(file, doc.errors.map((e) => e.message).join("; "));
      continue;
    }
    const object = doc.toJS();
    if (object === null) continue;
    if (object.kind === "Kustomization") {
      kustomization = { file, object };
      continue;
    }
    const where = `${file} ${object.kind}/${object.metadata?.name}`;
    const apiVersion = object.apiVersion ?? "";
    const group = apiVersion.includes("/") ? apiVersion : `v1`;
    let Model;
    try {
      const module = await load(`kubernetes-models/${group}/${object.kind}.js`);
      Model = module[object.kind];
    } catch (error) {
      fail(where, `unknown apiVersion/kind ${apiVersion} ${object.kind}`);
      continue;
    }
    try {
      new Model(object).validate();
      console.log(`schema ok: ${where}`);
    } catch (error) {
      fail(where, `schema: ${error.message}`);
    }
    objects.push({ where, object });
  }
}

const byKind = (kind) => objects.filter((o) => o.object.kind === kind);
const workloads = [...byKind("Deployment"), ...byKind("StatefulSet")];
if (workloads.length !== 1) fail("manifests", `expected one Deployment or StatefulSet, found ${workloads.length}`);
const secrets = new Map(byKind("Secret").map((o) => [o.object.metadata.name, o.object]));

for (const { where, object } of workloads) {
  const pod = object.spec.template;
  const labels = pod.metadata?.labels ?? {};
  for (const [k, v] of Object.entries(object.spec.selector?.matchLabels ?? {})) {
    if (labels[k] !== v) fail(where, `selector ${k}=${v} does not match the pod labels`);
  }
  const volumes = new Map((pod.spec.volumes ?? []).map((v) => [v.name, v]));
  for (const c of pod.spec.containers) {
    const cw = `${where} container ${c.name}`;
    const ports = new Map((c.ports ?? []).map((p) => [p.containerPort, p]));
    for (const probeName of ["livenessProbe", "readinessProbe"]) {
      const probe = c[probeName];
      if (!probe?.grpc) { fail(cw, `${probeName} must be a gRPC probe`); continue; }
      if (!ports.has(probe.grpc.port)) fail(cw, `${probeName} port ${probe.grpc.port} is not a declared containerPort`);
    }
    // The probe port must be fisherd's plaintext health listener (kubelet speaks no TLS).
    const args = c.args ?? [];
    const healthArg = args.find((a) => a.startsWith("--health-listen="));
    const usesTls = args.some((a) => a.startsWith("--tls-cert="));
    if (usesTls) {
      const healthPort = healthArg ? Number(healthArg.split(":").pop()) : NaN;
      if (c.livenessProbe?.grpc?.port !== healthPort || c.readinessProbe?.grpc?.port !== healthPort) {
        fail(cw, "with TLS the gRPC probes must target the --health-listen port");
      }
    }
    for (const kind of ["requests", "limits"]) {
      for (const resource of ["cpu", "memory"]) {
        if (!c.resources?.[kind]?.[resource]) fail(cw, `resources.${kind}.${resource} missing`);
      }
    }
    // Every file argument under a secret mount must be a key of that Secret.
    for (const mount of c.volumeMounts ?? []) {
      const volume = volumes.get(mount.name);
      if (!volume) { fail(cw, `volumeMount ${mount.name} has no volume`); continue; }
      if (!volume.secret) continue;
      const secret = secrets.get(volume.secret.secretName);
      if (!secret) { fail(cw, `Secret ${volume.secret.secretName} is not among the manifests`); continue; }
      const keys = new Set([...Object.keys(secret.stringData ?? {}), ...Object.keys(secret.data ?? {})]);
      for (const arg of args) {
        const value = arg.split("=").slice(1).join("=");
        if (value.startsWith(mount.mountPath + "/")) {
          const key = value.slice(mount.mountPath.length + 1);
          if (!keys.has(key)) fail(cw, `${arg}: Secret ${secret.metadata.name} has no key ${key}`);
        }
      }
      for (const key of ["tls.crt", "tls.key", "token"]) {
        if (!keys.has(key)) fail(cw, `Secret ${secret.metadata.name} lacks ${key}`);
      }
    }
    if (!args.some((a) => a.startsWith("--auth-token-file="))) fail(cw, "no --auth-token-file");
  }
  for (const { where: sw, object: service } of byKind("Service")) {
    for (const [k, v] of Object.entries(service.spec.selector ?? {})) {
      if (labels[k] !== v) fail(sw, `selector ${k}=${v} matches no pod of ${where}`);
    }
    const names = new Set(pod.spec.containers.flatMap((c) => (c.ports ?? []).map((p) => p.name)));
    for (const p of service.spec.ports) {
      if (typeof p.targetPort === "string" && !names.has(p.targetPort)) {
        fail(sw, `targetPort ${p.targetPort} is no named container port`);
      }
    }
  }
}
if (byKind("Service").length !== 1) fail("manifests", "expected one Service");
if (kustomization) {
  for (const resource of kustomization.object.resources ?? []) {
    if (!fs.existsSync(path.join(manifestDir, resource))) fail(kustomization.file, `missing ${resource}`);
  }
}

if (failures.length) {
  for (const f of failures) console.error(`FAIL ${f}`);
  process.exit(1);
}
console.log(`k8s manifests valid: ${objects.length} objects, schema and structure`);
