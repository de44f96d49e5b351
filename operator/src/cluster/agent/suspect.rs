//! Whose OOM kill it was: a worker's, in a container that lives on (counted by the agent), or
//! the container's own (the kubelet reports that one, and the controller counts it from the pod
//! status). A killed process stays listed while it exits, so a kill is judged over samples.

use crate::node::OomKill;

/// An OOM kill in a container, until it is judged a worker's (counted by the agent) or the
/// container's own (the kubelet reports that one, and the operator counts it from the pod status).
#[derive(Debug, Clone)]
pub(super) struct Suspect {
    pub(super) key: String,
    pub(super) kill: OomKill,
    /// PIDs listed in the sample that saw the kill.
    pub(super) listed: Vec<i32>,
    /// The named victims of that sample's kills.
    pub(super) victims: Vec<i32>,
    /// The cgroup kills as a group (`memory.oom.group`).
    pub(super) oom_group: bool,
    /// Samples that could not decide yet.
    pub(super) waited: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Judgement {
    Worker,
    Container,
    Undecided,
}

/// After this many samples with the victim still listed, it is judged as things stand.
const SUSPECT_SAMPLES: u32 = 5;

/// Whether a kill was a worker's: once its victim has left the cgroup (a killed process stays
/// listed while it exits), some process other than that sample's victims must still be there.
/// `now`: the PIDs listed now, `None` once the container is gone.
pub(super) fn judge(s: &Suspect, now: Option<&[i32]>) -> Judgement {
    if s.oom_group {
        return Judgement::Container;
    }
    let Some(now) = now else {
        // Gone before a later sample: a named victim with others beside it was a worker.
        let others = s.listed.iter().any(|p| !s.victims.contains(p));
        return if s.kill.pid.is_some() && others {
            Judgement::Worker
        } else {
            Judgement::Container
        };
    };
    let victim_gone = match s.kill.pid {
        Some(pid) => !now.contains(&pid),
        // Unnamed: some process of the kill's sample has gone since.
        None => s.listed.iter().any(|p| !now.contains(p)),
    };
    if !victim_gone && s.waited < SUSPECT_SAMPLES {
        return Judgement::Undecided;
    }
    let lives_on = now
        .iter()
        .any(|p| !s.victims.contains(p) && Some(*p) != s.kill.pid);
    if lives_on {
        Judgement::Worker
    } else {
        Judgement::Container
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kill_is_a_workers_only_if_another_process_lives_on() {
        use Judgement::*;
        let suspect = |pid: Option<i32>, listed: &[i32], victims: &[i32]| Suspect {
            key: "k".into(),
            kill: OomKill {
                pid,
                comm: pid.map(|_| "python3".into()),
                kernel_usec: None,
                last_rss: None,
                source: crate::node::KillSource::KernelLog,
            },
            listed: listed.to_vec(),
            victims: victims.to_vec(),
            oom_group: false,
            waited: 0,
        };
        // A worker (7) beside its master (1): decided once 7 has left the cgroup.
        let worker = suspect(Some(7), &[1, 7], &[7]);
        assert_eq!(
            judge(&worker, Some(&[1, 7])),
            Undecided,
            "7 is still exiting"
        );
        assert_eq!(judge(&worker, Some(&[1])), Worker);
        assert_eq!(judge(&worker, Some(&[])), Container, "nobody lives on");
        assert_eq!(judge(&worker, None), Worker, "the container went later");
        // A one-process container: its own death, however long the exit takes.
        let alone = suspect(Some(7), &[7], &[7]);
        assert_eq!(judge(&alone, Some(&[7])), Undecided);
        let waited = Suspect {
            waited: SUSPECT_SAMPLES,
            ..alone.clone()
        };
        assert_eq!(judge(&waited, Some(&[7])), Container);
        assert_eq!(judge(&alone, None), Container);
        // Two victims at once, nobody else: neither was a worker.
        assert_eq!(
            judge(&suspect(Some(7), &[7, 8], &[7, 8]), Some(&[8])),
            Container
        );
        // Unnamed victim: decided once some listed process has gone.
        let unnamed = suspect(None, &[1, 7], &[]);
        assert_eq!(judge(&unnamed, Some(&[1, 7])), Undecided);
        assert_eq!(judge(&unnamed, Some(&[1])), Worker);
        assert_eq!(judge(&suspect(None, &[7], &[]), Some(&[])), Container);
        assert_eq!(
            judge(&unnamed, None),
            Container,
            "cannot tell: the kubelet reports it"
        );
        // A killed process never seen in a sample (named by the kernel log) beside others.
        assert_eq!(judge(&suspect(Some(9), &[1], &[9]), Some(&[1])), Worker);
        // memory.oom.group: the kernel killed the whole container.
        let group = Suspect {
            oom_group: true,
            ..worker.clone()
        };
        assert_eq!(judge(&group, Some(&[1])), Container);
    }
}
