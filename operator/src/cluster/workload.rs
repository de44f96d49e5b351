//! Which workload a pod belongs to: Pod → ReplicaSet → Deployment, Job → CronJob, StatefulSet,
//! DaemonSet, or the bare Pod. One LeakReport per workload, named after it and owned by it.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Api, Client, Resource};

use crate::crd::WorkloadRef;

/// The annotation that opts a pod into memory capture without a LeakWatch.
pub const CAPTURE_ANNOTATION: &str = "leakhunt.dev/capture";

/// The owner that controls an object: the reference marked `controller`, else the first.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    let owners = meta.owner_references.as_deref()?;
    owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
}

/// What to do with an owner reference on the way up.
#[derive(Debug, PartialEq, Eq)]
pub enum Hop {
    /// This owner is the workload.
    Workload,
    /// Look this owner up: its own controller may be the workload (ReplicaSet → Deployment,
    /// Job → CronJob).
    LookUp,
}

pub fn hop(owner: &OwnerReference) -> Hop {
    let group = owner.api_version.split('/').next().unwrap_or_default();
    match (group, owner.kind.as_str()) {
        ("apps", "ReplicaSet") | ("batch", "Job") => Hop::LookUp,
        _ => Hop::Workload,
    }
}

fn workload_of(owner: &OwnerReference) -> WorkloadRef {
    let mut w = WorkloadRef::new(&owner.api_version, &owner.kind, &owner.name);
    w.uid = Some(owner.uid.clone());
    w
}

/// The pod itself, when nothing owns it.
pub fn bare_pod(pod: &Pod) -> WorkloadRef {
    let mut w = WorkloadRef::new(
        "v1",
        "Pod",
        pod.metadata.name.as_deref().unwrap_or_default(),
    );
    w.uid = pod.metadata.uid.clone();
    w
}

/// Looks up the controller of an intermediate owner (a ReplicaSet or a Job).
pub trait OwnerLookup {
    /// `Ok(None)`: the object has no controller; `Err`: it could not be read (gone, forbidden).
    fn controller(
        &self,
        namespace: &str,
        owner: &OwnerReference,
    ) -> impl std::future::Future<Output = Result<Option<OwnerReference>, kube::Error>> + Send;
}

/// Resolves a pod's workload. An intermediate owner that is gone (404) or may not be read (403)
/// is itself taken as the workload: a report about a ReplicaSet beats no report. Any other error
/// (a timeout, a 5xx) is returned, to be retried: guessing would file the kill under another
/// report, and the right one would count it again later.
pub async fn resolve<L: OwnerLookup>(lookup: &L, pod: &Pod) -> Result<WorkloadRef, kube::Error> {
    let Some(owner) = controller_of(&pod.metadata) else {
        return Ok(bare_pod(pod));
    };
    if hop(owner) == Hop::Workload {
        return Ok(workload_of(owner));
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    match lookup.controller(namespace, owner).await {
        Ok(Some(top)) => Ok(workload_of(&top)),
        Ok(None) => Ok(workload_of(owner)),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => Ok(workload_of(owner)),
        Err(e) => Err(e),
    }
}

/// Reads ReplicaSets and Jobs from the API server, remembering answers by UID: an owner's
/// controller never changes, and pods of one ReplicaSet are many.
pub struct ApiLookup {
    client: Client,
    cache: Mutex<HashMap<String, Option<OwnerReference>>>,
}

/// Remembered owner answers beyond this are dropped wholesale (bounded memory; a miss costs one GET).
const LOOKUP_CACHE_MAX: usize = 4096;

impl ApiLookup {
    pub fn new(client: Client) -> ApiLookup {
        ApiLookup {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn fetch<K>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<OwnerReference>, kube::Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let obj = api.get(name).await?;
        Ok(controller_of(obj.meta()).cloned())
    }
}

impl OwnerLookup for ApiLookup {
    async fn controller(
        &self,
        namespace: &str,
        owner: &OwnerReference,
    ) -> Result<Option<OwnerReference>, kube::Error> {
        if let Some(hit) = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(&owner.uid).cloned())
        {
            return Ok(hit);
        }
        let found = match owner.kind.as_str() {
            "ReplicaSet" => self.fetch::<ReplicaSet>(namespace, &owner.name).await?,
            "Job" => self.fetch::<Job>(namespace, &owner.name).await?,
            _ => None,
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= LOOKUP_CACHE_MAX {
                cache.clear();
            }
            cache.insert(owner.uid.clone(), found.clone());
        }
        Ok(found)
    }
}

/// The report's name: `deployment-leaky-flask`. Kubernetes names are at most 253 characters;
/// a longer one is cut and made unique with a hash of the whole.
pub fn report_name(workload: &WorkloadRef) -> String {
    let raw = format!("{}-{}", workload.kind, workload.name);
    // Owner references are not validated by the API server: keep only what a name may hold.
    let name: String = raw
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    let name = name.trim_matches(['-', '.']).to_string();
    if name.len() <= 253 && name == raw.to_ascii_lowercase() {
        return name;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(raw.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    // ASCII only by now, so any byte index is a character boundary.
    let head = name.get(..name.len().min(244)).unwrap_or_default();
    format!("{}-{hash}", head.trim_end_matches(['-', '.']))
}

/// The owner reference a report carries, so the garbage collector deletes it with its workload.
/// `blockOwnerDeletion` stays unset: setting it needs rights on the owner's finalizers.
pub fn owner_reference(workload: &WorkloadRef) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: workload.api_version.clone(),
        kind: workload.kind.clone(),
        name: workload.name.clone(),
        uid: workload.uid.clone()?,
        controller: None,
        block_owner_deletion: None,
    })
}

/// Whether a pod opted into capture by annotation.
pub fn capture_annotated(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CAPTURE_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(api: &str, kind: &str, name: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: api.into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            controller: Some(controller),
            block_owner_deletion: None,
        }
    }

    fn pod(owners: Vec<OwnerReference>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-7d9f-abcde".into()),
                namespace: Some("shop".into()),
                uid: Some("pod-uid".into()),
                owner_references: Some(owners),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Answers from a table; unknown names are "not found".
    struct Table(HashMap<String, Option<OwnerReference>>);

    impl OwnerLookup for Table {
        async fn controller(
            &self,
            _ns: &str,
            owner: &OwnerReference,
        ) -> Result<Option<OwnerReference>, kube::Error> {
            self.0.get(&owner.name).cloned().ok_or_else(|| {
                kube::Error::Api(
                    kube::core::Status::failure("not found", "NotFound")
                        .with_code(404)
                        .boxed(),
                )
            })
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn resolves_owner_chains() {
        let table = Table(HashMap::from([
            (
                "web-7d9f".to_string(),
                Some(owner("apps/v1", "Deployment", "web", true)),
            ),
            (
                "backup-2900".to_string(),
                Some(owner("batch/v1", "CronJob", "backup", true)),
            ),
            ("once".to_string(), None),
        ]));
        let cases = [
            (
                vec![owner("apps/v1", "ReplicaSet", "web-7d9f", true)],
                "Deployment/web",
            ),
            (
                vec![owner("batch/v1", "Job", "backup-2900", true)],
                "CronJob/backup",
            ),
            (vec![owner("batch/v1", "Job", "once", true)], "Job/once"),
            (
                vec![owner("apps/v1", "StatefulSet", "db", true)],
                "StatefulSet/db",
            ),
            (
                vec![owner("apps/v1", "DaemonSet", "agent", true)],
                "DaemonSet/agent",
            ),
            // The ReplicaSet is gone: it is the best name left.
            (
                vec![owner("apps/v1", "ReplicaSet", "gone-1", true)],
                "ReplicaSet/gone-1",
            ),
            // A non-controller reference is used only when no controller is marked.
            (
                vec![
                    owner("v1", "ConfigMap", "x", false),
                    owner("apps/v1", "StatefulSet", "db", true),
                ],
                "StatefulSet/db",
            ),
            (vec![], "Pod/web-7d9f-abcde"),
        ];
        for (owners, want) in cases {
            let w = block_on(resolve(&table, &pod(owners))).unwrap();
            assert_eq!(w.display, want);
            assert!(w.uid.is_some());
        }
        let w = block_on(resolve(
            &table,
            &pod(vec![owner("apps/v1", "ReplicaSet", "web-7d9f", true)]),
        ))
        .unwrap();
        assert_eq!(report_name(&w), "deployment-web");
        let o = owner_reference(&w).unwrap();
        assert_eq!((o.kind.as_str(), o.uid.as_str()), ("Deployment", "uid-web"));
    }

    #[test]
    fn long_names_stay_valid_and_distinct() {
        let a = WorkloadRef::new("apps/v1", "Deployment", &"a".repeat(253));
        let mut b_name = "a".repeat(252);
        b_name.push('b');
        let b = WorkloadRef::new("apps/v1", "Deployment", &b_name);
        let (na, nb) = (report_name(&a), report_name(&b));
        assert!(na.len() <= 253 && nb.len() <= 253);
        assert_ne!(na, nb);
        // Hostile owner names (not validated by the API server) give valid names, no panic.
        let hostile = WorkloadRef::new("x/v1", "Ki_nd", &"é".repeat(300));
        let n = report_name(&hostile);
        assert!(n.len() <= 253 && n.is_ascii() && !n.starts_with('-'), "{n}");
        let spaced = WorkloadRef::new("x/v1", "Kind", "a b");
        assert_ne!(
            report_name(&spaced),
            "kind-a-b",
            "rewritten names are made unique"
        );
    }

    #[test]
    fn capture_annotation() {
        let mut p = pod(vec![]);
        assert!(!capture_annotated(&p));
        p.metadata.annotations =
            Some([(CAPTURE_ANNOTATION.to_string(), "True".to_string())].into());
        assert!(capture_annotated(&p));
    }
}
