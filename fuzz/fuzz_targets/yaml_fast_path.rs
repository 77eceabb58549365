//! The YAML fast path against the saphyr-based reference reader (differential).
//!
//! For any UTF-8 text: when the fast path accepts it (returns a tree instead of deferring
//! with `None`), the reference must accept it too and build exactly the same documents
//! (values, scalar kinds, spans); when the reference fails, the fast path must have deferred.
//! A disagreement is a manifest that membrane would read differently from the API server.
//! Each input is checked twice: as a file, and as a block embedded in a scenario (shifted
//! line, column and offset, as `parse_scenario` passes it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use membrane_policy::yaml::{Embedding, parse_documents_fast, parse_documents_reference};

fn check(text: &str, embedding: Embedding) {
    let Some(fast) = parse_documents_fast(text, embedding) else {
        return;
    };
    match parse_documents_reference(text, embedding) {
        Ok(reference) => assert!(
            fast == reference,
            "fast path tree differs from the reference ({embedding:?})\ntext: {text:?}\nreference: {reference:?}\nfast:      {fast:?}"
        ),
        Err(e) => panic!(
            "fast path accepted a text the reference rejects ({embedding:?})\ntext: {text:?}\nreference error: {e:?}\nfast: {fast:?}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text, Embedding::default());
    check(
        text,
        Embedding {
            line_offset: 7,
            col_offset: 4,
            byte_offset: 90,
        },
    );
});
