//! The result of a run.

use serde::{Deserialize, Serialize};

/// What a guest did and how fast. Produced only by runs in which every read verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadReport {
    /// Workload name (`zipf`, `scan`, …).
    pub kind: String,
    /// Worker threads.
    pub threads: usize,
    /// Pages in the region.
    pub pages: u64,
    /// Page accesses of the access stage.
    pub accesses: u64,
    /// Page reads verified (populate, access and final check; 512 words each).
    pub reads_verified: u64,
    /// Page writes (populate and access).
    pub writes: u64,
    /// Distinct pages read or written.
    pub pages_touched: u64,
    /// Pages re-read by the final check.
    pub final_checked_pages: u64,
    /// Wall time of the populate stage.
    pub populate_secs: f64,
    /// Wall time of the access stage.
    pub access_secs: f64,
    /// Wall time of the final check.
    pub final_check_secs: f64,
    /// `accesses / access_secs`.
    pub access_throughput_per_sec: f64,
    /// Accesses per second of each phase (one entry unless the workload is `phases`).
    pub phase_throughput: Vec<f64>,
    /// `true` once the final check re-verified every touched page (every read during the run
    /// verified too, or there would be no report); `false` if the final check was skipped.
    pub verified: bool,
}
