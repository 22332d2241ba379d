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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

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

/// One live host mapping.
struct Entry {
    owner: String,
    pfns: BTreeSet<u64>,
    hook: Option<ViolationHook>,
}

/// The registry, kept in the hypervisor's state.
#[derive(Default)]
pub(crate) struct HostMap {
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
    violations: Vec<FreedWhileMapped>,
}

impl HostMap {
    fn insert(&mut self, owner: String, pfns: BTreeSet<u64>, hook: Option<ViolationHook>) -> u64 {
        self.next_id += 1;
        self.entries
            .insert(self.next_id, Entry { owner, pfns, hook });
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
            let hit: Vec<u64> = e.pfns.range(first..end).copied().collect();
            if !hit.is_empty() {
                let v = FreedWhileMapped {
                    gpa,
                    pages,
                    owner: e.owner.clone(),
                    pfns: hit,
                };
                self.violations.push(v.clone());
                out.push((v, e.hook.clone()));
            }
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
        owner: impl Into<String>,
        pfns: impl IntoIterator<Item = u64>,
        hook: Option<ViolationHook>,
    ) -> HostMapping {
        let id = lock(&self.shared.state).host_map.insert(
            owner.into(),
            pfns.into_iter().collect(),
            hook,
        );
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
            .map(|e| (e.owner.clone(), e.pfns.iter().copied().collect()))
            .collect()
    }

    /// Whether a live host mapping covers the page of `gpa`.
    pub fn is_host_mapped(&self, gpa: u64) -> bool {
        let pfn = gpa / 4096;
        self.state()
            .host_map
            .entries
            .values()
            .any(|e| e.pfns.contains(&pfn))
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
