//! TAP devices (being written).
