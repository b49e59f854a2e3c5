//! Manifests from arbitrary text: parsing, and applying whatever parses to an empty store and to
//! one holding the seed lab. What must hold: no panic; a rejected apply changes nothing (the
//! state and its generation are as before); a delete request parses or is an error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pacific_control::model::manifest::{parse_manifests, parse_object_refs};
use pacific_control::model::store::Store;
use pacific_control::model::SEED_LAB_YAML;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = parse_object_refs(text, Some("ns-dev"), None);
    let Ok(manifests) = parse_manifests(text, Some("ns-dev"), None) else { return };
    let mut seeded = Store::new("fuzz");
    if let Ok(seed) = parse_manifests(SEED_LAB_YAML, None, None) {
        let _ = seeded.apply(seed, 1);
    }
    for store in [Store::new("fuzz"), seeded] {
        let mut store = store;
        let before = store.state().clone();
        if store.apply(manifests.clone(), 2).is_err() {
            assert_eq!(store.state(), &before, "a rejected apply changed the state");
        }
    }
});
