//! vmtier-workload
