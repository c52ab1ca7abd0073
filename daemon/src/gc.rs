//! Pruning the snapshot cache by BuildKit's rules, for `Prune` calls and for
//! the worker's GC policies (run after builds).
//!
//! A prune removes records that no one holds, that match its filters, that
//! are not internal or frontend records unless `all`, and that were last
//! used before `keep_duration`. Without space limits every such record
//! goes. With them (`reservedSpace`, `maxUsedSpace`, `minFreeSpace`) the
//! prune computes how many bytes to keep, as BuildKit's
//! `calculateKeepBytes`, and removes the least recently used candidates
//! one at a time until the cache is below that. Start at [`prune`].

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bk_cache::{CacheError, CacheManager, Record, RecordType};

use crate::filters::Filters;

/// One prune: a `PruneRequest` or a GC policy.
pub struct PruneSpec {
    pub filters: Filters,
    pub all: bool,
    pub keep_duration: Duration,
    pub reserved_space: i64,
    pub max_used_space: i64,
    pub min_free_space: i64,
}

/// How many bytes the cache may keep; 0 means no space limit.
fn keep_bytes(total: i64, free: i64, spec: &PruneSpec) -> i64 {
    if spec.max_used_space == 0 && spec.reserved_space == 0 && spec.min_free_space == 0 {
        return 0;
    }
    let mut keep = spec.max_used_space;
    let excess = spec.min_free_space - free;
    if excess > 0 {
        keep = if keep == 0 {
            total - excess
        } else {
            keep.min(total - excess)
        };
    } else if spec.min_free_space != 0 && keep == 0 {
        // Enough free space and no other cap: nothing to remove.
        keep = total;
    }
    keep.max(spec.reserved_space)
}

/// Free bytes on the filesystem holding `path`.
fn free_space(path: &Path) -> i64 {
    match rustix::fs::statvfs(path) {
        Ok(s) => i64::try_from(s.f_bavail.saturating_mul(s.f_frsize)).unwrap_or(i64::MAX),
        Err(_) => i64::MAX,
    }
}

/// Removes what `spec` allows (blocking); returns the removed records.
/// `field` answers filter paths for a record (`type`, `id`, …).
pub fn prune(
    cache: &CacheManager,
    spec: &PruneSpec,
    field: impl Fn(&Record, &[String]) -> Option<String>,
    disk: &Path,
) -> Result<Vec<Record>, CacheError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let keep_secs = spec.keep_duration.as_secs();
    let eligible = |r: &Record| {
        let last = r.last_used_at.unwrap_or(r.created_at);
        let old_enough = keep_secs == 0 || now.saturating_sub(last) >= keep_secs;
        let kind_ok = spec.all || !matches!(r.kind, RecordType::Internal | RecordType::Frontend);
        old_enough && kind_ok && spec.filters.matches(|p| field(r, p))
    };
    let records = cache.records()?;
    let total: i64 = records.iter().map(|r| r.size.max(0)).sum();
    let free = if spec.min_free_space != 0 {
        free_space(disk)
    } else {
        0
    };
    let keep = keep_bytes(total, free, spec);
    if keep == 0 {
        return cache.prune(eligible);
    }
    // Least recently used first, then least used.
    let mut candidates: Vec<&Record> = records
        .iter()
        .filter(|r| eligible(r) && !cache.in_use(&r.id))
        .collect();
    candidates.sort_by_key(|r| (r.last_used_at.unwrap_or(r.created_at), r.usage_count));
    let mut remaining = total;
    let mut removed = Vec::new();
    for candidate in candidates {
        if remaining < keep {
            break;
        }
        let gone = cache.prune(|r| r.id == candidate.id)?;
        for r in gone {
            remaining -= r.size.max(0);
            removed.push(r);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(reserved: i64, max_used: i64, min_free: i64) -> PruneSpec {
        PruneSpec {
            filters: Filters::parse(&[]).unwrap(),
            all: false,
            keep_duration: Duration::ZERO,
            reserved_space: reserved,
            max_used_space: max_used,
            min_free_space: min_free,
        }
    }

    #[test]
    fn keep_bytes_as_buildkit_computes_it() {
        // No limits: no cap.
        assert_eq!(keep_bytes(1000, 50, &spec(0, 0, 0)), 0);
        // Max used only.
        assert_eq!(keep_bytes(1000, 50, &spec(0, 600, 0)), 600);
        // Reserved only: keep at least that much (prune down to it).
        assert_eq!(keep_bytes(1000, 50, &spec(300, 0, 0)), 300);
        // Free space short by 100: shrink by that, not below reserved.
        assert_eq!(keep_bytes(1000, 50, &spec(0, 0, 150)), 900);
        assert_eq!(keep_bytes(1000, 50, &spec(950, 0, 150)), 950);
        assert_eq!(keep_bytes(1000, 50, &spec(0, 800, 150)), 800);
        // Enough free space and nothing else: keep everything.
        assert_eq!(keep_bytes(1000, 500, &spec(0, 0, 150)), 1000);
    }
}
