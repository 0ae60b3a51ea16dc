// Validates docker/k8s/*.yaml without a cluster: every object against the Kubernetes
// OpenAPI schema (the npm package kubernetes-models, whose validate() checks types,
// required fields and unknown fields), then the structure fisherd relies on: gRPC
// probes on a declared port, requests and limits, every Secret key the pod reads,
// the Services selecting the pod and targeting a named port, the kustomization's list
// (every listed file present, every manifest listed). With --data-dir (durable
// sessions): the directory on a persistent volume (a StatefulSet's volumeClaimTemplate
// or a PersistentVolumeClaim), one replica, a startup probe that covers recovery, and a
// grace period that outlasts the drain plus the snapshots on drain; a StatefulSet's
// serviceName must be a headless Service besides the one Service clients use.
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

const manifestFiles = fs.readdirSync(manifestDir).filter((f) => /\.ya?ml$/.test(f)).sort();
for (const file of manifestFiles) {
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
const services = byKind("Service");
const isHeadless = (service) => service.object.spec?.clusterIP === "None";
// fisherd's own default --drain-seconds; the image passes 5, so this errs long.
const DEFAULT_DRAIN_SECONDS = 10;
// What the grace period must leave after the drain for the snapshots on drain.
const SNAPSHOT_MARGIN_SECONDS = 15;
const flagValue = (args, name) => {
  // fisherd takes the last of repeated flags, as arguments after the image's entrypoint
  // override its defaults.
  const found = args.filter((a) => a.startsWith(`--${name}=`));
  return found.length ? found[found.length - 1].slice(name.length + 3) : undefined;
};

for (const { where, object } of workloads) {
  const pod = object.spec.template;
  const labels = pod.metadata?.labels ?? {};
  for (const [k, v] of Object.entries(object.spec.selector?.matchLabels ?? {})) {
    if (labels[k] !== v) fail(where, `selector ${k}=${v} does not match the pod labels`);
  }
  const volumes = new Map((pod.spec.volumes ?? []).map((v) => [v.name, v]));
  // A StatefulSet's claim templates are volumes of its pod too, each on its own claim.
  const claimTemplates = new Set((object.spec.volumeClaimTemplates ?? []).map((t) => t.metadata?.name));
  for (const c of pod.spec.containers) {
    const cw = `${where} container ${c.name}`;
    const ports = new Map((c.ports ?? []).map((p) => [p.containerPort, p]));
    const args = c.args ?? [];
    const dataDir = flagValue(args, "data-dir");
    const durable = Boolean(dataDir);
    const probeNames = ["livenessProbe", "readinessProbe"];
    // Recovery (snapshots, then the log) runs before fisherd opens any port: without a
    // startup probe the liveness probe would kill a long recovery, again and again.
    if (durable || c.startupProbe) probeNames.push("startupProbe");
    for (const probeName of probeNames) {
      const probe = c[probeName];
      if (!probe?.grpc) { fail(cw, `${probeName} must be a gRPC probe`); continue; }
      if (!ports.has(probe.grpc.port)) fail(cw, `${probeName} port ${probe.grpc.port} is not a declared containerPort`);
    }
    // The probe port must be fisherd's plaintext health listener (kubelet speaks no TLS).
    const healthArg = args.find((a) => a.startsWith("--health-listen="));
    const usesTls = args.some((a) => a.startsWith("--tls-cert="));
    if (usesTls) {
      const healthPort = healthArg ? Number(healthArg.split(":").pop()) : NaN;
      if (probeNames.some((name) => c[name]?.grpc && c[name].grpc.port !== healthPort)) {
        fail(cw, "with TLS the gRPC probes must target the --health-listen port");
      }
    }
    if (durable) {
      // The data directory must outlive the pod: a claim, not the container's file system
      // (read-only here anyway) or an emptyDir.
      const mount = (c.volumeMounts ?? []).find((m) => m.mountPath.replace(/\/+$/, "") === dataDir.replace(/\/+$/, ""));
      if (!mount) {
        fail(cw, `--data-dir=${dataDir} is no volumeMount's mountPath`);
      } else if (mount.readOnly) {
        fail(cw, `--data-dir=${dataDir} is mounted read-only`);
      } else if (!claimTemplates.has(mount.name) && !volumes.get(mount.name)?.persistentVolumeClaim) {
        fail(cw, `--data-dir=${dataDir} is on volume ${mount.name}, which is no volumeClaimTemplate or PersistentVolumeClaim`);
      }
      // Two processes must never share a data directory, and each replica would hold
      // other sessions.
      if (object.spec.replicas !== 1) fail(where, `with --data-dir replicas must be 1, not ${object.spec.replicas}`);
      if (object.kind === "Deployment" && object.spec.strategy?.type !== "Recreate") {
        fail(where, "with --data-dir a Deployment must use strategy Recreate (no second pod on the volume)");
      }
      const drainArg = flagValue(args, "drain-seconds");
      const drain = drainArg === undefined ? DEFAULT_DRAIN_SECONDS : Number(drainArg);
      const grace = pod.spec.terminationGracePeriodSeconds ?? 30;
      if (!(grace >= drain + SNAPSHOT_MARGIN_SECONDS)) {
        fail(where, `terminationGracePeriodSeconds ${grace} leaves ${grace - drain} s after --drain-seconds ${drain}; the snapshots on drain need at least ${SNAPSHOT_MARGIN_SECONDS} s`);
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
      if (!volume && claimTemplates.has(mount.name)) continue;
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
  if (object.kind === "StatefulSet") {
    // Its governing Service: headless, so that it names the pod rather than balancing.
    const governing = services.find((s) => s.object.metadata.name === object.spec.serviceName);
    if (!object.spec.serviceName) fail(where, "no serviceName (the headless Service naming its pod)");
    else if (!governing) fail(where, `serviceName ${object.spec.serviceName} is no Service among the manifests`);
    else if (!isHeadless(governing)) fail(where, `serviceName ${object.spec.serviceName} must be headless (clusterIP: None)`);
  }
  for (const { where: sw, object: service } of services) {
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
// Clients get one load-balanced address; a headless Service only names pods.
const clientServices = services.filter((s) => !isHeadless(s));
if (clientServices.length !== 1) fail("manifests", `expected one Service for clients (not headless), found ${clientServices.length}`);
if (kustomization) {
  const listed = new Set(kustomization.object.resources ?? []);
  for (const resource of listed) {
    if (!fs.existsSync(path.join(manifestDir, resource))) fail(kustomization.file, `missing ${resource}`);
  }
  // A manifest left out of the list would be validated here but never applied.
  for (const file of manifestFiles) {
    if (file !== kustomization.file && !listed.has(file)) fail(kustomization.file, `does not list ${file}`);
  }
}

if (failures.length) {
  for (const f of failures) console.error(`FAIL ${f}`);
  process.exit(1);
}
console.log(`k8s manifests valid: ${objects.length} objects, schema and structure`);
