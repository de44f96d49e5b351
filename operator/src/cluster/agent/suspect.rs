//! Whose OOM kill it was: a worker's, in a container that lives on (counted by the agent), or
//! the container's own (the kubelet reports that one, and the controller counts it from the pod
//! status). A killed process stays listed while it exits, so a kill is judged over samples.

use crate::node::{KillSource, OomKill, ProcessMemory};

/// An OOM kill in a container, until it is judged a worker's (counted by the agent) or the
/// container's own (the kubelet reports that one, and the operator counts it from the pod status).
#[derive(Debug, Clone)]
pub(super) struct Suspect {
    pub(super) key: String,
    pub(super) kill: OomKill,
    /// The processes listed in the sample that saw the kill.
    pub(super) listed: Vec<ProcessMemory>,
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
        let others = s.listed.iter().any(|p| !s.victims.contains(&p.key.pid));
        return if s.kill.pid.is_some() && others {
            Judgement::Worker
        } else {
            Judgement::Container
        };
    };
    let victim_gone = match s.kill.pid {
        Some(pid) => !now.contains(&pid),
        // Unnamed: some process of the kill's sample has gone since.
        None => s.listed.iter().any(|p| !now.contains(&p.key.pid)),
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

/// Names an unnamed victim once it has left: the largest process of the kill's sample that is no
/// longer listed (the OOM killer picks the largest). The kill's sample often still lists the
/// victim while it exits, so the counter's own sample cannot tell which process it was.
pub(super) fn name_departed(s: &mut Suspect, now: &[i32]) {
    if s.kill.pid.is_some() {
        return;
    }
    if let Some(p) = s
        .listed
        .iter()
        .filter(|p| !now.contains(&p.key.pid))
        .max_by_key(|p| p.rss)
    {
        s.kill.pid = Some(p.key.pid);
        s.kill.comm = Some(p.comm.clone());
        s.kill.last_rss = Some(p.rss);
        s.kill.source = KillSource::Disappeared;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unnamed_victim_is_named_once_it_has_left() {
        // The counter's sample still listed the exiting worker (7) beside its master (1) and
        // a helper (8): the one that left by the next sample was the victim.
        let mut s = Suspect {
            key: "k".into(),
            kill: OomKill {
                pid: None,
                comm: None,
                kernel_usec: None,
                last_rss: None,
                source: KillSource::Unknown,
            },
            listed: vec![
                ProcessMemory::listed(1, "gunicorn", 30 << 20),
                ProcessMemory::listed(7, "worker", 90 << 20),
                ProcessMemory::listed(8, "helper", 1 << 20),
            ],
            victims: Vec::new(),
            oom_group: false,
            waited: 0,
        };
        name_departed(&mut s, &[1, 7, 8]);
        assert_eq!(s.kill.pid, None, "nobody has left yet");
        name_departed(&mut s, &[1, 8]);
        assert_eq!(s.kill.process_label(), "worker (pid 7)");
        assert_eq!(s.kill.last_rss, Some(90 << 20));
        assert_eq!(s.kill.source, KillSource::Disappeared);
        // A name once given stays, whatever leaves later.
        name_departed(&mut s, &[8]);
        assert_eq!(s.kill.pid, Some(7));
    }

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
            listed: listed
                .iter()
                .map(|&p| ProcessMemory::listed(p, "python3", 0))
                .collect(),
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
