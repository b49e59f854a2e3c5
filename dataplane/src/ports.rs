//! Worker threads (being written).
