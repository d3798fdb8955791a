//! vmtier-engine
