//! One task per pod bound to the node: prepares volumes, credentials and cgroups, runs the containers as
//! processes, restarts them per `restartPolicy` with back-off, and reports status as the kubelet does.

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, EnvVar, KeyToPath, Pod, PodCondition, PodIP, Secret,
    ServiceAccount, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::Client;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::cgroup::{self, CgroupMemory};
use crate::images::{ImageMap, ResolveError};
use crate::spec;

/// What every pod worker shares.
pub struct Runtime {
    pub client: Client,
    pub node_name: String,
    pub node_ip: String,
    pub images: ImageMap,
    pub cgroup_root: CgroupMemory,
    pub state_dir: PathBuf,
    pub server: String,
    pub ca_pem: String,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Mount points nodesim had to create on the host; removed (when empty) at exit.
    pub created_mountpoints: Mutex<HashSet<PathBuf>>,
}

/// Messages from the pod watcher.
pub type PodRx = watch::Receiver<Option<Pod>>;

struct Exited {
    slot: usize,
    generation: u64,
    status: std::io::Result<ExitStatus>,
}

/// One container (or init container) and the process currently running it.
struct Slot {
    spec: Container,
    init: bool,
    restart_count: i32,
    state: ContainerState,
    last_state: Option<ContainerState>,
    container_id: Option<String>,
    pid: Option<i32>,
    cgroup: Option<CgroupMemory>,
    generation: u64,
    next_start: Option<Instant>,
    started_once: bool,
    done: bool,
}

impl Slot {
    fn new(spec: Container, init: bool) -> Self {
        Self {
            spec,
            init,
            restart_count: 0,
            state: waiting("ContainerCreating", None),
            last_state: None,
            container_id: None,
            pid: None,
            cgroup: None,
            generation: 0,
            next_start: Some(Instant::now()),
            started_once: false,
            done: false,
        }
    }

    fn status(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.spec.name.clone(),
            image: self.spec.image.clone().unwrap_or_default(),
            image_id: format!("nodesim://{}", self.spec.image.clone().unwrap_or_default()),
            container_id: self.container_id.clone(),
            ready: self.state.running.is_some() && !self.init,
            started: Some(self.state.running.is_some()),
            restart_count: self.restart_count,
            state: Some(self.state.clone()),
            last_state: self.last_state.clone(),
            ..Default::default()
        }
    }
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message,
        }),
        ..Default::default()
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A pod's on-disk state (volumes, kubeconfig, logs) under `STATE/pods/<ns>_<name>_<uid>`.
fn pod_dir(rt: &Runtime, pod: &Pod) -> PathBuf {
    rt.state_dir.join("pods").join(format!(
        "{}_{}_{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("pod"),
        pod.metadata.uid.as_deref().unwrap_or("nouid")
    ))
}

struct Mount {
    source: PathBuf,
    target: PathBuf,
    read_only: bool,
}

/// Everything prepared once per pod.
struct Prepared {
    dir: PathBuf,
    volumes: BTreeMap<String, PathBuf>,
    kubeconfig: Option<PathBuf>,
    pod_cgroup: CgroupMemory,
}

pub async fn run(rt: Arc<Runtime>, mut rx: PodRx, mut shutdown: watch::Receiver<bool>) {
    let Some(mut pod) = rx.borrow().clone() else {
        return;
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(rt.client.clone(), &ns);
    let spec_ = pod.spec.clone().unwrap_or_default();
    let restart_policy = spec_
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    tracing::info!(pod = %format!("{ns}/{name}"), %uid, "pod bound to node");

    // A pod already finished (nodesim restarted) has nothing to run; only a pending deletion needs us.
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );

    let mut slots: Vec<Slot> = spec_
        .init_containers
        .iter()
        .flatten()
        .map(|c| Slot::new(c.clone(), true))
        .chain(spec_.containers.iter().map(|c| Slot::new(c.clone(), false)))
        .collect();
    let n_init = spec_.init_containers.as_ref().map_or(0, |v| v.len());
    let start_time = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .unwrap_or_else(now);
    let mut init_failed = false;
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<Exited>();

    let prepared = if terminal {
        None
    } else {
        match prepare(&rt, &pod).await {
            Ok(p) => Some(p),
            Err(message) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), %message, "pod setup failed");
                for s in &mut slots {
                    s.state = waiting("CreateContainerConfigError", Some(message.clone()));
                    s.next_start = None;
                }
                None
            }
        }
    };

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut dirty = !terminal;
    let mut last_patch = Instant::now() - Duration::from_secs(60);
    loop {
        // Start whatever is due: init containers one at a time and in order, then all app containers.
        if let Some(p) = prepared.as_ref() {
            let init_done = slots.iter().take(n_init).all(|s| s.done);
            let first_pending_init = slots.iter().take(n_init).position(|s| !s.done);
            for i in 0..slots.len() {
                let eligible = if i < n_init {
                    Some(i) == first_pending_init && !init_failed
                } else {
                    init_done
                };
                let due = slots[i].pid.is_none()
                    && !slots[i].done
                    && slots[i].next_start.is_some_and(|t| t <= Instant::now());
                if eligible && due {
                    start(&rt, &pod, p, &mut slots, i, &exit_tx).await;
                    dirty = true;
                }
            }
        }

        if dirty && last_patch.elapsed() >= Duration::from_millis(200) {
            let init_done = slots.iter().take(n_init).all(|s| s.done);
            patch_status(
                &rt,
                &pods,
                &pod,
                &slots,
                n_init,
                &restart_policy,
                init_done,
                init_failed,
                &start_time,
            )
            .await;
            dirty = false;
            last_patch = Instant::now();
            let app: Vec<ContainerStatus> = slots.iter().skip(n_init).map(Slot::status).collect();
            let phase = spec::pod_phase(&restart_policy, init_done, &app, init_failed);
            if matches!(phase, "Succeeded" | "Failed") && slots.iter().all(|s| s.pid.is_none()) {
                if let Some(p) = prepared.as_ref() {
                    p.pod_cgroup.destroy().await;
                }
            }
        }

        tokio::select! {
            _ = tick.tick() => {}
            Some(exited) = exit_rx.recv() => {
                if let Some(slot) = slots.get_mut(exited.slot) {
                    if slot.generation == exited.generation {
                        on_exit(&rt, slot, exited.status, &restart_policy).await;
                        if slot.init && slot.next_start.is_none() && !slot.done {
                            init_failed = true;
                        }
                        dirty = true;
                    }
                }
            }
            changed = rx.changed() => {
                let latest = if changed.is_ok() { rx.borrow().clone() } else { None };
                match latest {
                    Some(p) if p.metadata.deletion_timestamp.is_none() => { pod = p; continue; }
                    Some(p) => {
                        let grace = p.metadata.deletion_grace_period_seconds.unwrap_or(30).clamp(0, 30);
                        terminate(&mut slots, Duration::from_secs(grace as u64), &mut exit_rx).await;
                        pod = p;
                        let init_done = slots.iter().take(n_init).all(|s| s.done);
                        patch_status(&rt, &pods, &pod, &slots, n_init, &restart_policy, init_done, init_failed, &start_time).await;
                        let dp = DeleteParams {
                            grace_period_seconds: Some(0),
                            preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
                            ..Default::default()
                        };
                        if let Err(e) = pods.delete(&name, &dp).await {
                            tracing::debug!(error = %e, "final pod delete");
                        }
                    }
                    None => terminate(&mut slots, Duration::from_secs(2), &mut exit_rx).await,
                }
                break;
            }
            _ = shutdown.changed() => {
                terminate(&mut slots, Duration::from_secs(3), &mut exit_rx).await;
                break;
            }
        }
    }

    if let Some(p) = prepared {
        p.pod_cgroup.destroy().await;
        let _ = std::fs::remove_dir_all(p.dir.join("volumes"));
    }
    tracing::info!(pod = %format!("{ns}/{name}"), "pod worker finished");
}

/// Volumes, service-account credentials and the pod cgroup.
async fn prepare(rt: &Runtime, pod: &Pod) -> Result<Prepared, String> {
    let dir = pod_dir(rt, pod);
    let spec_ = pod.spec.clone().unwrap_or_default();
    std::fs::create_dir_all(dir.join("volumes")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();

    // Service-account token minted by the TokenRequest API and bound to this pod, exactly what the kubelet
    // projects; processes get it as a kubeconfig in $KUBECONFIG so RBAC applies to them as in a cluster.
    let sa = spec_
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let automount = spec_.automount_service_account_token != Some(false);
    let token = if automount || has_token_projection(&spec_.volumes) {
        Some(token_for(rt, pod, &sa, None).await?)
    } else {
        None
    };
    let kubeconfig = match (&token, automount) {
        (Some(t), true) => {
            let path = dir.join("kubeconfig");
            write_private(
                &path,
                kubeconfig_yaml(&rt.server, &rt.ca_pem, &ns, &sa, t).as_bytes(),
            )?;
            Some(path)
        }
        _ => None,
    };

    let mut volumes = BTreeMap::new();
    for v in spec_.volumes.iter().flatten() {
        let path = volume(rt, pod, &dir, v, token.as_deref()).await?;
        volumes.insert(v.name.clone(), path);
    }

    let qos = pod.status.as_ref().and_then(|s| s.qos_class.clone());
    let mut parent = rt
        .cgroup_root
        .child("kubepods")
        .map_err(|e| e.to_string())?;
    if let Some(q) = cgroup::qos_dir(qos.as_deref()) {
        parent = parent.child(q).map_err(|e| e.to_string())?;
    }
    let pod_cgroup = parent
        .child(&format!("pod{}", pod.metadata.uid.as_deref().unwrap_or("")))
        .map_err(|e| e.to_string())?;
    pod_cgroup
        .set_limit(spec::pod_memory_limit(&spec_.containers))
        .map_err(|e| e.to_string())?;
    Ok(Prepared {
        dir,
        volumes,
        kubeconfig,
        pod_cgroup,
    })
}

fn has_token_projection(volumes: &Option<Vec<Volume>>) -> bool {
    volumes.iter().flatten().any(|v| {
        v.projected.as_ref().is_some_and(|p| {
            p.sources
                .iter()
                .flatten()
                .any(|s| s.service_account_token.is_some())
        })
    })
}

async fn token_for(
    rt: &Runtime,
    pod: &Pod,
    sa: &str,
    audience: Option<String>,
) -> Result<String, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ServiceAccount> = Api::namespaced(rt.client.clone(), &ns);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: Some(24 * 3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    api.create_token_request(sa, &PostParams::default(), &req)
        .await
        .map_err(|e| format!("TokenRequest for serviceaccount {ns}/{sa}: {e}"))?
        .status
        .map(|s| s.token)
        .ok_or_else(|| format!("TokenRequest for serviceaccount {ns}/{sa} returned no token"))
}

fn kubeconfig_yaml(server: &str, ca_pem: &str, ns: &str, sa: &str, token: &str) -> String {
    let cfg = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "nodesim", "cluster": {
            "server": server,
            "certificate-authority-data": base64_encode(ca_pem.as_bytes()),
        }}],
        "users": [{"name": format!("system:serviceaccount:{ns}:{sa}"), "user": {"token": token}}],
        "contexts": [{"name": "pod", "context": {
            "cluster": "nodesim", "user": format!("system:serviceaccount:{ns}:{sa}"), "namespace": ns,
        }}],
        "current-context": "pod",
    });
    serde_yaml::to_string(&cfg).unwrap_or_default()
}

pub fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut f, data).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `key → data` pairs (ConfigMap, Secret, projection) into `dir`, honouring `items`.
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
) -> Result<(), String> {
    match items {
        Some(items) => {
            for it in items {
                if let Some(v) = data.get(&it.key) {
                    write_private(&dir.join(&it.path), v)?;
                }
            }
        }
        None => {
            for (k, v) in data {
                write_private(&dir.join(k), v)?;
            }
        }
    }
    Ok(())
}

async fn configmap_data(
    rt: &Runtime,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let api: Api<ConfigMap> = Api::namespaced(rt.client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(cm)) => {
            let mut out: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            out.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            Ok(out)
        }
        Ok(None) if optional => Ok(BTreeMap::new()),
        Ok(None) => Err(format!("configmap \"{name}\" not found")),
        Err(e) => Err(format!("configmap {ns}/{name}: {e}")),
    }
}

async fn secret_data(
    rt: &Runtime,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let api: Api<Secret> = Api::namespaced(rt.client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(s)) => {
            let mut out: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            out.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            Ok(out)
        }
        Ok(None) if optional => Ok(BTreeMap::new()),
        Ok(None) => Err(format!("secret \"{name}\" not found")),
        Err(e) => Err(format!("secret {ns}/{name}: {e}")),
    }
}

/// Materialises one volume as a host directory and returns its path.
async fn volume(
    rt: &Runtime,
    pod: &Pod,
    dir: &Path,
    v: &Volume,
    token: Option<&str>,
) -> Result<PathBuf, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let own = dir.join("volumes").join(&v.name);
    if let Some(hp) = &v.host_path {
        let path = PathBuf::from(&hp.path);
        match hp.type_.as_deref() {
            Some("DirectoryOrCreate") => std::fs::create_dir_all(&path)
                .map_err(|e| format!("hostPath {}: {e}", path.display()))?,
            Some("FileOrCreate") if !path.exists() => write_private(&path, b"")?,
            Some("Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice")
                if !path.exists() =>
            {
                return Err(format!(
                    "hostPath type check failed: {} does not exist",
                    path.display()
                ));
            }
            _ => {}
        }
        return Ok(path);
    }
    std::fs::create_dir_all(&own).map_err(|e| format!("{}: {e}", own.display()))?;
    if v.empty_dir.is_some() {
        // A real directory per pod; `medium: Memory` is a directory too (no tmpfs needed for tests).
    } else if let Some(cm) = &v.config_map {
        let data = configmap_data(rt, &ns, &cm.name, cm.optional.unwrap_or(false)).await?;
        write_keys(&own, &data, cm.items.as_ref())?;
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let data = secret_data(rt, &ns, &name, s.optional.unwrap_or(false)).await?;
        write_keys(&own, &data, s.items.as_ref())?;
    } else if let Some(d) = &v.downward_api {
        for it in d.items.iter().flatten() {
            if let Some(f) = &it.field_ref {
                let value = spec::field_ref(pod, &f.field_path, &rt.node_ip).unwrap_or_default();
                write_private(&own.join(&it.path), value.as_bytes())?;
            }
        }
    } else if let Some(p) = &v.projected {
        for src in p.sources.iter().flatten() {
            if let Some(t) = &src.service_account_token {
                let sa = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into());
                let tok = match (&t.audience, token) {
                    (None, Some(tok)) => tok.to_string(),
                    (aud, _) => token_for(rt, pod, &sa, aud.clone()).await?,
                };
                write_private(&own.join(&t.path), tok.as_bytes())?;
            }
            if let Some(cm) = &src.config_map {
                let mut data =
                    configmap_data(rt, &ns, &cm.name, cm.optional.unwrap_or(false)).await?;
                if cm.name == "kube-root-ca.crt" && data.is_empty() {
                    data.insert("ca.crt".into(), rt.ca_pem.clone().into_bytes());
                }
                write_keys(&own, &data, cm.items.as_ref())?;
            }
            if let Some(s) = &src.secret {
                let data = secret_data(rt, &ns, &s.name, s.optional.unwrap_or(false)).await?;
                write_keys(&own, &data, s.items.as_ref())?;
            }
            if let Some(d) = &src.downward_api {
                for it in d.items.iter().flatten() {
                    if let Some(f) = &it.field_ref {
                        let value =
                            spec::field_ref(pod, &f.field_path, &rt.node_ip).unwrap_or_default();
                        write_private(&own.join(&it.path), value.as_bytes())?;
                    }
                }
            }
        }
    } else {
        tracing::warn!(volume = %v.name, "volume type not simulated; using an empty directory");
    }
    Ok(own)
}

/// The container's environment as the kubelet builds it.
async fn environment(
    rt: &Runtime,
    pod: &Pod,
    p: &Prepared,
    c: &Container,
) -> Result<BTreeMap<String, String>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        }),
    );
    env.insert(
        "HOME".into(),
        std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
    );
    env.insert(
        "HOSTNAME".into(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    if let Some(port) = rt.server.rsplit(':').next() {
        env.insert("KUBERNETES_SERVICE_HOST".into(), rt.node_ip.clone());
        env.insert(
            "KUBERNETES_SERVICE_PORT".into(),
            port.trim_end_matches('/').to_string(),
        );
    }
    if let Some(kc) = &p.kubeconfig {
        env.insert("KUBECONFIG".into(), kc.display().to_string());
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(cm) = &from.config_map_ref {
            configmap_data(rt, &ns, &cm.name, cm.optional.unwrap_or(false)).await?
        } else if let Some(s) = &from.secret_ref {
            secret_data(rt, &ns, &s.name, s.optional.unwrap_or(false)).await?
        } else {
            BTreeMap::new()
        };
        for (k, v) in data {
            env.insert(
                format!("{prefix}{k}"),
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
    }
    for EnvVar {
        name,
        value,
        value_from,
        ..
    } in c.env.iter().flatten()
    {
        let value = if let Some(v) = value {
            spec::expand(v, &env)
        } else if let Some(from) = value_from {
            if let Some(f) = &from.field_ref {
                spec::field_ref(pod, &f.field_path, &rt.node_ip)
                    .ok_or_else(|| format!("env {name}: unsupported fieldPath {}", f.field_path))?
            } else if let Some(r) = &from.resource_field_ref {
                spec::resource_field_ref(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()))
                    .ok_or_else(|| format!("env {name}: unsupported resource {}", r.resource))?
            } else if let Some(k) = &from.config_map_key_ref {
                let data = configmap_data(rt, &ns, &k.name, k.optional.unwrap_or(false)).await?;
                match data.get(&k.key) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None if k.optional.unwrap_or(false) => continue,
                    None => {
                        return Err(format!(
                            "couldn't find key {} in ConfigMap {ns}/{}",
                            k.key, k.name
                        ))
                    }
                }
            } else if let Some(k) = &from.secret_key_ref {
                let data = secret_data(rt, &ns, &k.name, k.optional.unwrap_or(false)).await?;
                match data.get(&k.key) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None if k.optional.unwrap_or(false) => continue,
                    None => {
                        return Err(format!(
                            "couldn't find key {} in Secret {ns}/{}",
                            k.key, k.name
                        ))
                    }
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.insert(name.clone(), value);
    }
    Ok(env)
}

/// Starts the process for slot `i`; on a configuration error leaves it waiting with the kubelet's reason.
async fn start(
    rt: &Runtime,
    pod: &Pod,
    p: &Prepared,
    slots: &mut [Slot],
    i: usize,
    exit_tx: &mpsc::UnboundedSender<Exited>,
) {
    let Some(slot) = slots.get_mut(i) else { return };
    let c = slot.spec.clone();
    let image = c.image.clone().unwrap_or_default();
    let env = match environment(rt, pod, p, &c).await {
        Ok(env) => env,
        Err(message) => {
            slot.state = waiting("CreateContainerConfigError", Some(message));
            slot.next_start = Some(Instant::now() + rt.backoff_base);
            return;
        }
    };
    let command: Vec<String> = c
        .command
        .iter()
        .flatten()
        .map(|s| spec::expand(s, &env))
        .collect();
    let args: Vec<String> = c
        .args
        .iter()
        .flatten()
        .map(|s| spec::expand(s, &env))
        .collect();
    let argv = match rt
        .images
        .resolve(&image, &command, &args, &|v| std::env::var(v).ok())
    {
        Ok(argv) => argv,
        Err(e) => {
            let reason = match e {
                // The kubelet alternates ErrImagePull and ImagePullBackOff; the first is what users grep for.
                ResolveError::UnknownImage(_) => "ErrImagePull",
                ResolveError::MissingVar { .. } => "CreateContainerConfigError",
                ResolveError::NoCommand { .. } => "CreateContainerError",
            };
            slot.state = waiting(reason, Some(format!("nodesim: {e}")));
            slot.next_start = Some(Instant::now() + rt.backoff_max);
            return;
        }
    };

    let id = random_hex(32);
    let cg = match p.pod_cgroup.child(&id) {
        Ok(cg) => cg,
        Err(e) => {
            slot.state = waiting("CreateContainerError", Some(e.to_string()));
            slot.next_start = Some(Instant::now() + rt.backoff_base);
            return;
        }
    };
    if let Err(e) = cg.set_limit(spec::memory_limit(&c)) {
        slot.state = waiting("CreateContainerError", Some(e.to_string()));
        cg.destroy().await;
        slot.next_start = Some(Instant::now() + rt.backoff_base);
        return;
    }

    // Volume mounts: bind-mounted at their mountPath in a private mount namespace of the container, so a
    // program reads /var/run/secrets/... or its hostPath where the spec says.
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(src) = p.volumes.get(&m.name) else {
            continue;
        };
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => src.join(sub),
            None => src.clone(),
        };
        let target = PathBuf::from(&m.mount_path);
        if source == target {
            continue;
        }
        if !target.exists() {
            // Remember every directory we are about to create, not only the last, so exit removes them all.
            let missing: Vec<PathBuf> = target
                .ancestors()
                .skip(1)
                .take_while(|a| !a.exists())
                .map(Path::to_path_buf)
                .collect();
            if let Ok(mut set) = rt.created_mountpoints.lock() {
                set.extend(missing);
            }
            let created = if source.is_dir() {
                std::fs::create_dir_all(&target).is_ok()
            } else {
                target
                    .parent()
                    .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
                    && std::fs::write(&target, b"").is_ok()
            };
            if !created {
                tracing::warn!(target = %target.display(), "cannot create mount point");
                continue;
            }
            if let Ok(mut set) = rt.created_mountpoints.lock() {
                set.insert(target.clone());
            }
        }
        mounts.push(Mount {
            source,
            target,
            read_only: m.read_only.unwrap_or(false),
        });
    }

    let log_dir = p.dir.join("logs").join(&c.name);
    let _ = std::fs::create_dir_all(&log_dir);
    let log_path = log_dir.join(format!("{}.log", slot.restart_count));
    let (stdout, stderr) =
        match std::fs::File::create(&log_path).and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
    let workdir = c
        .working_dir
        .as_ref()
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| p.dir.clone());

    let mut cmd =
        tokio::process::Command::new(argv.first().map(String::as_str).unwrap_or("/bin/false"));
    cmd.args(argv.iter().skip(1))
        .env_clear()
        .envs(&env)
        .current_dir(&workdir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(false);
    let setup = match ChildSetup::new(&cg.procs_file(), &mounts) {
        Ok(s) => s,
        Err(e) => {
            slot.state = waiting("CreateContainerError", Some(e));
            cg.destroy().await;
            slot.next_start = Some(Instant::now() + rt.backoff_base);
            return;
        }
    };
    // SAFETY: the closure only makes async-signal-safe syscalls (setsid, prctl, open/write/close, unshare,
    // mount) on data prepared before the fork, and allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || setup.apply());
    }
    match cmd.spawn() {
        Ok(mut child) => {
            let pid = child.id().map(|p| p as i32);
            slot.generation += 1;
            let generation = slot.generation;
            let tx = exit_tx.clone();
            tokio::spawn(async move {
                let status = child.wait().await;
                let _ = tx.send(Exited {
                    slot: i,
                    generation,
                    status,
                });
            });
            if slot.started_once {
                slot.restart_count += 1;
            }
            slot.started_once = true;
            slot.pid = pid;
            slot.cgroup = Some(cg);
            slot.container_id = Some(format!("nodesim://{id}"));
            slot.next_start = None;
            slot.state = ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(now()),
                }),
                ..Default::default()
            };
            tracing::info!(pod = pod.metadata.name.as_deref().unwrap_or(""), container = %c.name, pid = ?pid, argv = ?argv, "container started");
        }
        Err(e) => {
            cg.destroy().await;
            slot.state = waiting(
                "RunContainerError",
                Some(format!("exec {:?}: {e}", argv.first())),
            );
            slot.next_start = Some(Instant::now() + backoff(rt, slot.restart_count));
        }
    }
}

fn backoff(rt: &Runtime, restarts: i32) -> Duration {
    let factor = 1u32 << restarts.clamp(0, 16) as u32;
    rt.backoff_base.saturating_mul(factor).min(rt.backoff_max)
}

/// Records a process exit: OOMKilled when the container cgroup's OOM-kill counter moved, then decides on
/// a restart with back-off.
async fn on_exit(
    rt: &Runtime,
    slot: &mut Slot,
    status: std::io::Result<ExitStatus>,
    restart_policy: &str,
) {
    let oom_kills = slot.cgroup.as_ref().map_or(0, CgroupMemory::oom_kills);
    let (exit_code, signal) = match &status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (code, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            _ => (255, None),
        },
        Err(_) => (255, None),
    };
    let reason = if oom_kills > 0 && exit_code != 0 {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let started_at = slot
        .state
        .running
        .as_ref()
        .and_then(|r| r.started_at.clone());
    tracing::info!(container = %slot.spec.name, exit_code, ?signal, oom_kills, reason, "container exited");
    if let Some(cg) = slot.cgroup.take() {
        cg.destroy().await;
    }
    slot.pid = None;
    let terminated = ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code,
            signal,
            reason: Some(reason.to_string()),
            started_at: started_at.clone(),
            finished_at: Some(now()),
            container_id: slot.container_id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let restart = if slot.init {
        // Init containers restart on failure unless the policy is Never (Always behaves as OnFailure).
        exit_code != 0 && restart_policy != "Never"
    } else {
        match restart_policy {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        }
    };
    if restart {
        // The kubelet restarts at once the first time, then backs off 10s, 20s, 40s... up to 5 minutes;
        // a container that ran for 10 minutes starts over.
        let ran_long = started_at
            .as_ref()
            .is_some_and(|t| Timestamp::now().as_second() - t.0.as_second() > 600);
        let delay = if slot.restart_count == 0 || ran_long {
            Duration::ZERO
        } else {
            backoff(rt, slot.restart_count - 1)
        };
        slot.last_state = Some(terminated);
        slot.state = waiting(
            "CrashLoopBackOff",
            Some(format!(
                "back-off {}s restarting failed container={}",
                delay.as_secs(),
                slot.spec.name
            )),
        );
        slot.next_start = Some(Instant::now() + delay);
    } else {
        slot.state = terminated;
        slot.next_start = None;
        slot.done = exit_code == 0 || !slot.init;
    }
}

/// SIGTERM to each container's process group, SIGKILL after the grace period, cgroups removed.
async fn terminate(
    slots: &mut [Slot],
    grace: Duration,
    exit_rx: &mut mpsc::UnboundedReceiver<Exited>,
) {
    for s in slots.iter() {
        if let Some(pid) = s.pid {
            cgroup::unsafe_kill(-pid, libc::SIGTERM);
            cgroup::unsafe_kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while slots.iter().any(|s| s.pid.is_some()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, exit_rx.recv()).await {
            Ok(Some(ex)) => {
                if let Some(s) = slots.get_mut(ex.slot) {
                    if s.generation == ex.generation {
                        mark_killed(s, ex.status.ok());
                    }
                }
            }
            _ => break,
        }
    }
    for s in slots.iter_mut() {
        if let Some(cg) = s.cgroup.take() {
            cg.destroy().await;
        }
        if s.pid.is_some() {
            mark_killed(s, None);
        }
    }
}

fn mark_killed(s: &mut Slot, status: Option<ExitStatus>) {
    let code = status
        .map(|st| st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(9)))
        .unwrap_or(137);
    s.pid = None;
    let started_at = s.state.running.as_ref().and_then(|r| r.started_at.clone());
    if s.state.running.is_some() {
        s.state = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
                started_at,
                finished_at: Some(now()),
                container_id: s.container_id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
    }
}

#[allow(clippy::too_many_arguments)]
async fn patch_status(
    rt: &Runtime,
    pods: &Api<Pod>,
    pod: &Pod,
    slots: &[Slot],
    n_init: usize,
    restart_policy: &str,
    init_done: bool,
    init_failed: bool,
    start_time: &Time,
) {
    let init: Vec<ContainerStatus> = slots.iter().take(n_init).map(Slot::status).collect();
    let app: Vec<ContainerStatus> = slots.iter().skip(n_init).map(Slot::status).collect();
    let phase = spec::pod_phase(restart_policy, init_done, &app, init_failed);
    let all_ready = !app.is_empty() && app.iter().all(|s| s.ready);
    let t = now();
    let previous = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let cond = |type_: &str, ok: bool, reason: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        let same = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status);
        PodCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.filter(|_| !ok).map(String::from),
            last_transition_time: Some(
                same.and_then(|c| c.last_transition_time.clone())
                    .unwrap_or_else(|| t.clone()),
            ),
            ..Default::default()
        }
    };
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let reason_ready = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let mut conditions: Vec<PodCondition> = previous
        .iter()
        .filter(|c| c.type_ == "PodScheduled")
        .cloned()
        .collect();
    conditions.push(cond("PodReadyToStartContainers", !terminal, None));
    conditions.push(cond(
        "Initialized",
        init_done,
        Some(if terminal {
            "PodCompleted"
        } else {
            "ContainersNotInitialized"
        }),
    ));
    conditions.push(cond(
        "ContainersReady",
        all_ready && !terminal,
        Some(reason_ready),
    ));
    conditions.push(cond("Ready", all_ready && !terminal, Some(reason_ready)));
    let ips = vec![PodIP {
        ip: rt.node_ip.clone(),
    }];
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": rt.node_ip,
        "hostIPs": [{"ip": rt.node_ip}],
        "podIP": rt.node_ip,
        "podIPs": ips,
        "startTime": start_time,
        "containerStatuses": app,
    });
    if n_init > 0 {
        status["initContainerStatuses"] = json!(init);
    }
    let patch = json!({ "status": status });
    if let Err(e) = pods
        .patch_status(
            pod.metadata.name.as_deref().unwrap_or(""),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::debug!(error = %e, "pod status patch");
    }
}

/// What the forked child does before exec, prepared in the parent so the child allocates nothing.
struct ChildSetup {
    procs: CString,
    mounts: Vec<(CString, CString, bool)>,
}

impl ChildSetup {
    fn new(procs: &Path, mounts: &[Mount]) -> Result<Self, String> {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string());
        Ok(Self {
            procs: c(procs)?,
            mounts: mounts
                .iter()
                .map(|m| Ok((c(&m.source)?, c(&m.target)?, m.read_only)))
                .collect::<Result<_, String>>()?,
        })
    }

    #[allow(unsafe_code)]
    fn apply(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: plain syscalls on NUL-terminated strings owned by `self`, valid for the call.
        unsafe {
            // Own session and process group, so termination reaches the whole container.
            check(libc::setsid())?;
            // If nodesim dies without cleaning up, its direct children die with it.
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            // Join the container's memory cgroup before exec: every allocation is charged to it.
            let fd = libc::open(self.procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            check(fd)?;
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if !self.mounts.is_empty() {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                // Keep the container's mounts from propagating back to the host.
                check(libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for (src, dst, ro) in &self.mounts {
                    check(libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                    if *ro {
                        check(libc::mount(
                            std::ptr::null(),
                            dst.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null(),
                        ))?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }
}
