//! vmtier-storage
