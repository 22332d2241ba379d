//! Guest pages the host side still maps, so a guest that frees one is caught.
//!
//! The host keeps using guest memory after the guest handed it over: GPADL pages until it
//! answers GPADL_TEARDOWN with GPADL_TORNDOWN (vmbus-core §6.3: "keep GPADL memory resident
//! ... until GPADL_TORNDOWN arrives", §6.4 step 3), the pages of a GPA-direct request until it
//! completes the request, and the monitor / legacy interrupt pages of a connection until
//! UNLOAD_RESPONSE (§10.3: without UNLOAD the host keeps writing into them). A guest that
//! frees such a page through the HAL lets the next allocation be overwritten by the host.
//!
//! Host-side code (the mock VMBus host, device models) registers what it maps with
//! [`MockHypervisor::map_for_host`] and keeps the returned [`HostMapping`]; dropping it
//! unmaps. [`MockHal`](super::MockHal)'s `free_pages` checks the freed pages against the live
//! mappings: every overlap becomes a [`FreedWhileMapped`] record, listed by
//! [`MockHypervisor::freed_while_mapped`] and reported to the mapping's
//! [`ViolationHook`] (the VMBus host puts it in its protocol-error log). It is never fatal:
//! the free goes ahead (and the pages are poisoned) so the test carries on and reports.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use super::{MockHypervisor, lock};

/// Called (outside the hypervisor's lock) for each violation of the mapping it was registered
/// with.
pub type ViolationHook = Arc<dyn Fn(&FreedWhileMapped) + Send + Sync>;

/// The guest freed pages that a live host mapping still covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreedWhileMapped {
    /// First GPA of the freed allocation.
    pub gpa: u64,
    /// Pages freed.
    pub pages: usize,
    /// Who maps them, e.g. "GPADL 0xe1e10 of relid 1".
    pub owner: String,
    /// The PFNs both freed and mapped.
    pub pfns: Vec<u64>,
}

impl fmt::Display for FreedWhileMapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "guest freed {} page(s) at {:#x} while the host still maps PFN(s) {} of them: {}",
            self.pages,
            self.gpa,
            pfn_list(&self.pfns),
            self.owner
        )
    }
}

fn pfn_list(pfns: &[u64]) -> String {
    const SHOWN: usize = 4;
    let mut s = pfns
        .iter()
        .take(SHOWN)
        .map(|p| format!("{p:#x}"))
        .collect::<Vec<_>>()
        .join(", ");
    if pfns.len() > SHOWN {
        s.push_str(&format!(", ... ({} in all)", pfns.len()));
    }
    s
}

/// Who maps pages, as reports name it. A GPA-direct request is described without formatting a
/// string per request (the host maps one per I/O); the text is made only for a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOwner {
    /// Free text, e.g. "GPADL 0xe1e10 of relid 1".
    Text(String),
    /// The pages of a GPA-direct request the host has not completed.
    GpaDirectRequest {
        /// The channel.
        relid: u32,
        /// The request's transaction id.
        transaction_id: u64,
    },
}

impl fmt::Display for MapOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(s) => f.write_str(s),
            Self::GpaDirectRequest {
                relid,
                transaction_id,
            } => write!(
                f,
                "GPA-direct request {transaction_id:#x} on channel {relid} (not completed)"
            ),
        }
    }
}

impl From<String> for MapOwner {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<&str> for MapOwner {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

/// The GPA-direct requests of one channel that the host has taken and not yet completed,
/// mapped as one group ([`MockHypervisor::map_requests_for_host`]): the host side adds and
/// removes requests under the set's own lock, so taking and completing a request costs no
/// trip through the hypervisor's lock (the host does it once per I/O).
#[derive(Default)]
pub struct RequestSet {
    /// (transaction id, PFNs), oldest first.
    requests: Vec<(u64, Vec<u64>)>,
    /// PFN vectors of completed requests, reused.
    spare: Vec<Vec<u64>>,
}

impl RequestSet {
    /// The host took request `transaction_id` naming `pfns`.
    pub fn add(&mut self, transaction_id: u64, pfns: impl IntoIterator<Item = u64>) {
        let mut v = self.spare.pop().unwrap_or_default();
        v.clear();
        v.extend(pfns);
        self.requests.push((transaction_id, v));
    }

    /// The host completed `transaction_id` (no-op if not there); returns whether it was.
    pub fn remove(&mut self, transaction_id: u64) -> bool {
        match self.requests.iter().position(|(t, _)| *t == transaction_id) {
            Some(i) => {
                let (_, v) = self.requests.remove(i);
                self.spare.push(v);
                true
            }
            None => false,
        }
    }

    /// Forgets every request (the host dropped them with the channel).
    pub fn clear(&mut self) {
        for (_, v) in self.requests.drain(..) {
            self.spare.push(v);
        }
    }

    /// Moves every request into a new set (a closing host that still works on them).
    pub fn take(&mut self) -> RequestSet {
        RequestSet {
            requests: std::mem::take(&mut self.requests),
            spare: Vec::new(),
        }
    }

    /// Transaction ids, oldest first.
    pub fn transaction_ids(&self) -> Vec<u64> {
        self.requests.iter().map(|(t, _)| *t).collect()
    }

    /// Whether no request is in the set.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

/// A request set shared by the host side (which fills it) and the hypervisor (which checks
/// frees against it).
pub type SharedRequestSet = Arc<Mutex<RequestSet>>;

fn lock_set(s: &Mutex<RequestSet>) -> std::sync::MutexGuard<'_, RequestSet> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a live host mapping covers.
enum Pages {
    /// Fixed pages, sorted, without duplicates.
    Fixed { owner: MapOwner, pfns: Vec<u64> },
    /// The requests of channel `relid` in a set that changes.
    Requests { relid: u32, set: SharedRequestSet },
}

/// One live host mapping.
struct Entry {
    pages: Pages,
    hook: Option<ViolationHook>,
}

impl Entry {
    /// Every (owner, PFNs) the entry covers now.
    fn each(&self, mut f: impl FnMut(&dyn Fn() -> MapOwner, &[u64])) {
        match &self.pages {
            Pages::Fixed { owner, pfns } => f(&|| owner.clone(), pfns),
            Pages::Requests { relid, set } => {
                for (tid, pfns) in &lock_set(set).requests {
                    f(
                        &|| MapOwner::GpaDirectRequest {
                            relid: *relid,
                            transaction_id: *tid,
                        },
                        pfns,
                    );
                }
            }
        }
    }
}

/// The registry, kept in the hypervisor's state.
#[derive(Default)]
pub(crate) struct HostMap {
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
    violations: Vec<FreedWhileMapped>,
}

impl HostMap {
    fn insert(&mut self, owner: MapOwner, mut pfns: Vec<u64>, hook: Option<ViolationHook>) -> u64 {
        pfns.sort_unstable();
        pfns.dedup();
        self.add(Pages::Fixed { owner, pfns }, hook)
    }

    fn add(&mut self, pages: Pages, hook: Option<ViolationHook>) -> u64 {
        self.next_id += 1;
        self.entries.insert(self.next_id, Entry { pages, hook });
        self.next_id
    }

    fn remove(&mut self, id: u64) {
        self.entries.remove(&id);
    }

    /// Checks a free of PFNs `[first_pfn, first_pfn + pages)` starting at `gpa`; records and
    /// returns the violations with the hooks to call.
    pub(crate) fn check_free(
        &mut self,
        gpa: u64,
        pages: usize,
    ) -> Vec<(FreedWhileMapped, Option<ViolationHook>)> {
        let first = gpa / 4096;
        let end = first + pages as u64;
        let mut out = Vec::new();
        for e in self.entries.values() {
            e.each(|owner, pfns| {
                let hit: Vec<u64> = pfns
                    .iter()
                    .copied()
                    .filter(|p| (first..end).contains(p))
                    .collect();
                if !hit.is_empty() {
                    let v = FreedWhileMapped {
                        gpa,
                        pages,
                        owner: owner().to_string(),
                        pfns: hit,
                    };
                    self.violations.push(v.clone());
                    out.push((v, e.hook.clone()));
                }
            });
        }
        out
    }
}

/// A live host mapping of guest pages; dropping it unmaps them (see the module docs).
#[must_use = "the mapping ends when this is dropped"]
pub struct HostMapping {
    hv: MockHypervisor,
    id: u64,
}

impl fmt::Debug for HostMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostMapping").field("id", &self.id).finish()
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        lock(&self.hv.shared.state).host_map.remove(self.id);
    }
}

impl MockHypervisor {
    /// Records that the host maps the guest pages `pfns` (GPA >> 12) on behalf of `owner` (a
    /// description used in reports) until the returned guard is dropped. A guest free of any
    /// of these pages meanwhile is recorded (see [`Self::freed_while_mapped`]) and passed to
    /// `hook`; without a hook it also goes into [`Self::protocol_errors`], so it is never
    /// silent.
    pub fn map_for_host(
        &self,
        owner: impl Into<MapOwner>,
        pfns: impl IntoIterator<Item = u64>,
        hook: Option<ViolationHook>,
    ) -> HostMapping {
        let (owner, pfns) = (owner.into(), pfns.into_iter().collect());
        let id = lock(&self.shared.state).host_map.insert(owner, pfns, hook);
        HostMapping {
            hv: self.clone(),
            id,
        }
    }

    /// Records that the host maps the pages of every GPA-direct request of channel `relid`
    /// that `set` holds, for as long as it holds them, until the returned guard is dropped
    /// (violations as for [`Self::map_for_host`], each naming its request).
    pub fn map_requests_for_host(
        &self,
        relid: u32,
        set: SharedRequestSet,
        hook: Option<ViolationHook>,
    ) -> HostMapping {
        let id = lock(&self.shared.state)
            .host_map
            .add(Pages::Requests { relid, set }, hook);
        HostMapping {
            hv: self.clone(),
            id,
        }
    }

    /// Every guest free so far of a page a live host mapping covered, oldest first.
    pub fn freed_while_mapped(&self) -> Vec<FreedWhileMapped> {
        self.state().host_map.violations.clone()
    }

    /// The live host mappings: (owner, PFNs), in registration order.
    pub fn host_mappings(&self) -> Vec<(String, Vec<u64>)> {
        self.state()
            .host_map
            .entries
            .values()
            .flat_map(|e| {
                let mut v = Vec::new();
                e.each(|owner, pfns| v.push((owner().to_string(), pfns.to_vec())));
                v
            })
            .collect()
    }

    /// Whether a live host mapping covers the page of `gpa`.
    pub fn is_host_mapped(&self, gpa: u64) -> bool {
        let pfn = gpa / 4096;
        self.state().host_map.entries.values().any(|e| {
            let mut hit = false;
            e.each(|_, pfns| hit |= pfns.contains(&pfn));
            hit
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_free_reports_only_overlaps() {
        let mut m = HostMap::default();
        let a = m.insert("A".into(), [10, 11, 12].into(), None);
        m.insert("B".into(), [20].into(), None);
        assert!(m.check_free(13 * 4096, 7).is_empty());
        let v = m.check_free(11 * 4096, 10);
        let hits: Vec<_> = v
            .iter()
            .map(|(v, _)| (v.owner.as_str(), v.pfns.clone()))
            .collect();
        assert_eq!(hits, [("A", vec![11, 12]), ("B", vec![20])]);
        m.remove(a);
        assert!(m.check_free(10 * 4096, 3).is_empty());
        assert_eq!(m.violations.len(), 2);
        assert!(v[0].0.to_string().contains("PFN(s) 0xb, 0xc of them: A"));
    }
}
