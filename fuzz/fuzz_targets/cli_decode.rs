//! The `shmbus` command's decoders: what `echo` prints of a slot (Pod, postcard, array-topic
//! descriptors, hex dumps; with or without an `--as` layout), what `ls` and `inspect` show of a
//! header, the `--as` grammar and the recorded type names it parses, and the pool-segment
//! names `ls` and `rm` take apart.
//!
//! Input: a header (`size_of::<Header>()` bytes, as `segment::peek` reads it), a flags byte
//! (bit 0: give the text that follows as `--as`), the text's length (2 bytes, little-endian),
//! the text (UTF-8 or not used), then the slot.
//!
//! Checks: nothing panics; `echo`'s `--json` line is one JSON document; a layout that parses
//! prints back as a layout that parses to the same; the same for recorded type names; a pool
//! segment's topic is a prefix of its name that names its pool.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmbus_cli::fuzzing as cli;
use shmbus_core::fuzzing::peek_header;
use shmbus_core::segment::Header;

const HEADER: usize = size_of::<Header>();

fuzz_target!(|data: &[u8]| {
    let (header, rest) = data.split_at(data.len().min(HEADER));
    let (flags, rest) = rest.split_first().map_or((0, rest), |(f, r)| (*f, r));
    let (len, rest) = rest.split_at(rest.len().min(2));
    let text_len = match len {
        [a, b] => usize::from(u16::from_le_bytes([*a, *b])),
        _ => 0,
    };
    let (text, slot) = rest.split_at(rest.len().min(text_len));
    let text = std::str::from_utf8(text).ok();

    if let Some(t) = text {
        if let Ok(printed) = cli::parse_spec(t) {
            let again = cli::parse_spec(&printed)
                .unwrap_or_else(|e| panic!("{t:?} printed as {printed:?}, which fails: {e}"));
            assert_eq!(again, printed, "{t:?} does not print back to itself");
        }
        if let Some(printed) = cli::known_type(t) {
            let again = cli::parse_spec(&printed)
                .unwrap_or_else(|e| panic!("type {t:?} printed as {printed:?}, which fails: {e}"));
            assert_eq!(again, printed);
        }
        if let Some(topic) = cli::pool_topic(t) {
            let rest = t
                .strip_prefix(topic)
                .expect("the topic is a prefix of the name");
            assert!(
                rest.starts_with(".pool."),
                "{t:?} names no pool of {topic:?}"
            );
        }
    }

    let Ok(info) = peek_header(header, false) else {
        return;
    };
    let views = cli::header_views(&info);
    serde_json::from_str::<serde_json::Value>(&views).expect("header views are JSON");
    let as_spec = if flags & 1 == 1 { text } else { None };
    if let Ok((json, text)) = cli::echo(&info, as_spec, slot) {
        let v: serde_json::Value = serde_json::from_str(&json).expect("echo --json is JSON");
        assert!(v.get("seq").is_some());
        assert!(text.starts_with("#0"));
    }
});
