//! Transcript-conformance tests (filled in below).
