//! The record of runbook actions (`actions.history_file`): every switchover,
//! failover, drill, drain and undrain with its timeline, and the weight each
//! drained region had before. Written whole to a temporary file and renamed,
//! so a crash never leaves half a file; a file that cannot be parsed is never
//! overwritten.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Operations kept in the file (oldest dropped first).
pub const KEEP: usize = 100;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// Oldest first.
    #[serde(default)]
    pub operations: Vec<Operation>,
    /// Region → Route 53 weight it had when it was drained (weighted records).
    #[serde(default)]
    pub weights_before_drain: BTreeMap<String, i64>,
    /// Region → its latency records, removed while the region is drained,
    /// as files written before drains kept them in Route 53 (see
    /// [`crate::kept`]) hold them: read so that such a region can still be
    /// undrained, and no longer written. (Older files still keep one
    /// record per region alone.)
    #[serde(
        default,
        deserialize_with = "records_by_region",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub drained_records: BTreeMap<String, Vec<crate::aws::SavedRecord>>,
}

/// A region's kept records: a list, or one record alone.
fn records_by_region<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Vec<crate::aws::SavedRecord>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Kept {
        Many(Vec<crate::aws::SavedRecord>),
        One(crate::aws::SavedRecord),
    }
    let kept = BTreeMap::<String, Kept>::deserialize(d)?;
    Ok(kept
        .into_iter()
        .map(|(region, k)| {
            let records = match k {
                Kept::Many(records) => records,
                Kept::One(record) => vec![record],
            };
            (region, records)
        })
        .collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Planned: `SwitchoverGlobalCluster`, no data loss.
    Switchover,
    /// Unplanned: `FailoverGlobalCluster` with data loss allowed.
    Failover,
    /// A switchover and back.
    Drill,
    Drain,
    Undrain,
}

impl Kind {
    /// The writer moves.
    pub fn moves_writer(self) -> bool {
        matches!(self, Kind::Switchover | Kind::Failover | Kind::Drill)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Switchover => "switchover",
            Kind::Failover => "failover",
            Kind::Drill => "drill",
            Kind::Drain => "drain",
            Kind::Undrain => "undrain",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// Names this operation among all others, also in other machines'
    /// history files (empty in entries written before ids were kept).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub kind: Kind,
    /// `cli` or `automation`.
    pub by: String,
    /// Who ran it, as `user@host` (see [`crate::actions::operator`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operator: String,
    /// One line: what was asked.
    pub summary: String,
    /// Unix milliseconds when it was requested.
    pub started_ms: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_seconds: f64,
    pub timeline: Vec<Step>,
    /// False while it runs (or when the process following it stopped).
    #[serde(default = "finished_default")]
    pub finished: bool,
}

fn finished_default() -> bool {
    true
}

/// One step of a timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    /// Seconds after the request.
    pub at_seconds: f64,
    pub detail: String,
}

/// The most a history file may hold.
pub const MAX_HISTORY_BYTES: u64 = 16 * 1024 * 1024;

impl Operation {
    /// AWS accepted its change request.
    pub fn requested(&self) -> bool {
        self.timeline.iter().any(|s| s.name.ends_with("requested"))
    }

    pub fn started_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.started_ms)
    }

    /// "2026-11-26T12:00:00Z (3h 2m ago)"; a time past what RFC 3339
    /// writes (year 9999, from a damaged file) is given in milliseconds.
    pub fn when(&self, now: SystemTime) -> String {
        /// 10000-01-01T00:00:00Z, in milliseconds.
        const PAST_RFC3339_MS: u64 = 253_402_300_800_000;
        if self.started_ms >= PAST_RFC3339_MS {
            return format!("{} ms after 1970 (not a date)", self.started_ms);
        }
        let at = self.started_at();
        let ago = now.duration_since(at).unwrap_or_default();
        let ago = humantime::format_duration(Duration::from_secs(ago.as_secs()));
        format!("{} ({ago} ago)", humantime::format_rfc3339_seconds(at))
    }
}

impl History {
    /// The last operation that asked AWS to move the writer (finished or
    /// not; a refused request moved nothing and does not count).
    pub fn last_writer_move(&self) -> Option<&Operation> {
        self.last_writer_move_at().map(|i| &self.operations[i])
    }

    /// The automated failovers that failed in a row, last of all the
    /// automation's, and when the last of them ended: the retry wait a
    /// restarted control plane keeps to.
    pub fn automation_failures(&self) -> (u32, Option<SystemTime>) {
        let mut failed = (0, None);
        for o in self
            .operations
            .iter()
            .rev()
            .filter(|o| o.by == "automation" && o.kind == Kind::Failover)
        {
            if o.ok || !o.finished {
                break;
            }
            let ended = o.started_at()
                + Duration::try_from_secs_f64(o.duration_seconds).unwrap_or_default();
            failed = (failed.0 + 1, failed.1.max(Some(ended)));
        }
        failed
    }

    /// The last drill that finished.
    pub fn last_drill(&self) -> Option<&Operation> {
        self.last_drill_at().map(|i| &self.operations[i])
    }

    /// Where [`Self::last_writer_move`] is in the list.
    fn last_writer_move_at(&self) -> Option<usize> {
        self.operations
            .iter()
            .rposition(|o| o.kind.moves_writer() && o.requested())
    }

    /// Where [`Self::last_drill`] is in the list.
    fn last_drill_at(&self) -> Option<usize> {
        self.operations
            .iter()
            .rposition(|o| o.kind == Kind::Drill && o.finished)
    }

    /// Drops the oldest operations past [`KEEP`], but never the last drill
    /// or the last writer move: what `status`, the dashboard and the
    /// automation's `min_interval` read survives a run of failed actions.
    fn trim(&mut self) {
        let mut excess = self.operations.len().saturating_sub(KEEP);
        if excess == 0 {
            return;
        }
        let pinned = [self.last_drill_at(), self.last_writer_move_at()];
        let mut index = 0;
        self.operations.retain(|_| {
            let keep = excess == 0 || pinned.contains(&Some(index));
            index += 1;
            if !keep {
                excess -= 1;
            }
            keep
        });
    }

    /// Forgets what a drain of `region` kept here: it is back in DNS.
    pub fn forget_drain(&mut self, region: &str) {
        self.weights_before_drain.remove(region);
        self.drained_records.remove(region);
    }

    /// Keeps `op` in place of the entry with its id, or adds it: an
    /// operation is written when it starts (so a crash leaves a record
    /// saying it did not finish) and again when it ends.
    pub fn put(&mut self, op: Operation) {
        let same = |o: &Operation| {
            if op.id.is_empty() {
                o.started_ms == op.started_ms && o.kind == op.kind && o.by == op.by
            } else {
                o.id == op.id
            }
        };
        match self.operations.iter_mut().rev().find(|o| same(o)) {
            Some(slot) => *slot = op,
            None => self.operations.push(op),
        }
    }

    /// Reads the file; a missing file is an empty history. It must be a
    /// regular file (a pipe would stall the server that reads it) of at
    /// most [`MAX_HISTORY_BYTES`].
    pub fn load(path: &Path) -> Result<History, String> {
        match edgeroute_config::read_regular(
            path,
            MAX_HISTORY_BYTES,
            "the history keeps 100 actions, a few hundred KiB; move it aside to start a new one",
        ) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "history file {} is not valid ({e}); move it aside to start a new one",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(History::default()),
            Err(e) => Err(format!("cannot read history file {}: {e}", path.display())),
        }
    }

    /// Loads the file, applies `change`, and writes it back atomically.
    pub fn update(path: &Path, change: impl FnOnce(&mut History)) -> Result<History, String> {
        // One writer at a time across processes (the commands and the
        // control plane's automation): an exclusive lock on a file beside it.
        let lock_path = path.with_extension("lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                format!(
                    "cannot open {} ({e}); set actions.history_file to a writable path",
                    lock_path.display()
                )
            })?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("cannot lock {}: {e}", lock_path.display()))?;
        let mut h = History::load(path)?;
        change(&mut h);
        h.trim();
        let json = serde_json::to_vec_pretty(&h).map_err(|e| e.to_string())?;
        let tmp = temp_path(path);
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!(
                    "cannot write history file {} ({e}); set actions.history_file to a writable path",
                    path.display()
                )
            })?;
        Ok(h)
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An operation AWS accepted, run by hand, that ended well a second
    /// after `started_ms`; other modules' tests change what they need.
    pub(crate) fn op(kind: Kind, started_ms: u64) -> Operation {
        Operation {
            id: format!("{}-{started_ms}", kind.as_str()),
            kind,
            by: "cli".into(),
            operator: "alice@bastion".into(),
            summary: kind.as_str().into(),
            started_ms,
            ok: true,
            error: None,
            duration_seconds: 1.0,
            timeline: vec![Step {
                name: "requested".into(),
                at_seconds: 0.0,
                detail: String::new(),
            }],
            finished: true,
        }
    }

    #[test]
    fn a_history_path_that_is_no_regular_file_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = crate::fifo(dir.path(), "history.json");
        let err = History::load(&fifo).unwrap_err();
        assert!(
            err.starts_with("cannot read history file") && err.contains("not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn a_start_past_year_9999_is_written_without_a_date() {
        let now = SystemTime::now();
        for ms in [253_402_300_800_000, u64::MAX] {
            let when = op(Kind::Drill, ms).when(now);
            assert_eq!(when, format!("{ms} ms after 1970 (not a date)"));
        }
        let when = op(Kind::Drill, 0).when(now);
        assert!(when.starts_with("1970-01-01T00:00:00Z ("), "{when}");
    }

    #[test]
    fn updates_keep_the_last_operations_and_find_the_last_drill() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.json");
        assert!(History::load(&path).unwrap().operations.is_empty());
        for i in 0..(KEEP as u64 + 5) {
            let kind = if i == 3 { Kind::Drill } else { Kind::Drain };
            History::update(&path, |h| h.operations.push(op(kind, i))).unwrap();
        }
        History::update(&path, |h| h.operations.push(op(Kind::Drill, 1000))).unwrap();
        let h = History::load(&path).unwrap();
        assert_eq!(h.operations.len(), KEEP);
        assert_eq!(h.last_drill().unwrap().started_ms, 1000);
        assert_eq!(h.last_writer_move().unwrap().started_ms, 1000);
    }

    #[test]
    fn a_run_of_failed_actions_never_pushes_out_the_last_drill() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.json");
        History::update(&path, |h| h.put(op(Kind::Drill, 1))).unwrap();
        for i in 0..(KEEP as u64 * 2) {
            let mut failed = op(Kind::Failover, 10 + i);
            failed.ok = false;
            failed.timeline.clear();
            History::update(&path, |h| h.put(failed)).unwrap();
        }
        let h = History::load(&path).unwrap();
        assert_eq!(h.operations.len(), KEEP);
        assert_eq!(h.last_drill().unwrap().started_ms, 1);
        assert_eq!(
            h.last_writer_move().unwrap().started_ms,
            1,
            "the drill moved the writer"
        );
    }

    /// The automation's failures in a row are counted back from its last
    /// failover, whatever others ran between; its last success ends them.
    #[test]
    fn the_automations_failures_in_a_row_are_counted_from_the_file() {
        let mut h = History::default();
        assert_eq!(h.automation_failures(), (0, None));
        let auto = |started_ms: u64, ok: bool| {
            let mut o = op(Kind::Failover, started_ms);
            o.by = "automation".into();
            o.ok = ok;
            o
        };
        h.put(auto(1_000, true));
        h.put(auto(2_000, false));
        h.put(op(Kind::Switchover, 2_500));
        h.put(auto(3_000, false));
        assert_eq!(
            h.automation_failures(),
            (2, Some(UNIX_EPOCH + Duration::from_millis(4_000))),
            "two failures since the success, the last ending a second after 3 s"
        );
        h.put(auto(5_000, true));
        assert_eq!(h.automation_failures(), (0, None));
    }

    #[test]
    fn an_operation_recorded_at_its_start_is_replaced_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.json");
        let mut started = op(Kind::Failover, 7);
        started.ok = false;
        started.finished = false;
        started.error = Some("did not finish".into());
        History::update(&path, |h| h.put(started)).unwrap();
        assert!(!History::load(&path).unwrap().last_writer_move().unwrap().ok);
        History::update(&path, |h| h.put(op(Kind::Failover, 7))).unwrap();
        let h = History::load(&path).unwrap();
        assert_eq!(h.operations.len(), 1);
        assert!(h.operations[0].ok);

        // Two of one kind started in the same millisecond (two operators
        // sharing a file) are two entries: each is found by its id.
        let mut other = op(Kind::Failover, 7);
        other.id = "another".into();
        other.ok = false;
        History::update(&path, |h| h.put(other.clone())).unwrap();
        other.ok = true;
        History::update(&path, |h| h.put(other)).unwrap();
        let h = History::load(&path).unwrap();
        assert_eq!(h.operations.len(), 2);
        assert!(h.operations.iter().all(|o| o.ok));
        // An entry written before ids were kept is still found by its
        // start, kind and author.
        let mut old = op(Kind::Drain, 9);
        old.id.clear();
        old.ok = false;
        History::update(&path, |h| h.put(old.clone())).unwrap();
        old.ok = true;
        History::update(&path, |h| h.put(old)).unwrap();
        let h = History::load(&path).unwrap();
        assert_eq!(h.operations.len(), 3);
        assert!(h.operations[2].ok);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"operator\": \"alice@bastion\""), "{text}");
    }

    #[test]
    fn a_region_kept_with_one_record_reads_as_a_list_of_one() {
        let record = r#"{"name":"api.example.com.","type":"A","set_identifier":"eu-west-1","region":"eu-west-1","health_check_id":null,"ttl":60,"values":["192.0.2.1"],"alias":null}"#;
        let old = format!(r#"{{"drained_records":{{"eu-west-1":{record}}}}}"#);
        let new = format!(r#"{{"drained_records":{{"eu-west-1":[{record},{record}]}}}}"#);
        let old: History = serde_json::from_str(&old).unwrap();
        let new: History = serde_json::from_str(&new).unwrap();
        assert_eq!(old.drained_records["eu-west-1"].len(), 1);
        assert_eq!(new.drained_records["eu-west-1"].len(), 2);
        assert_eq!(
            old.drained_records["eu-west-1"][0],
            new.drained_records["eu-west-1"][1]
        );
    }

    #[test]
    fn a_corrupt_file_is_reported_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.json");
        std::fs::write(&path, "{ not json").unwrap();
        let err = History::update(&path, |h| h.operations.push(op(Kind::Drain, 1))).unwrap_err();
        assert!(err.contains("move it aside"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
    }
}
