//! Entry points over plain bytes for the fuzz targets in `fuzz/` (feature `fuzzing`; not an
//! API): what `echo` makes of a slot, and what `ls` and `inspect` make of a header, without a
//! segment. They run the command's own code and return what it would print.

use shmbus_core::segment::{Lifetime, SegmentInfo};

use crate::budget::Budget;
use crate::{output, spec, survey, watch};

/// What `echo` prints for the message `slot` of the topic whose header `peek` read as `info`,
/// with `--as as_spec` when given: the `--json` line and the text. `Err`: the command refused
/// the layout before reading any message (its error message).
pub fn echo(
    info: &SegmentInfo,
    as_spec: Option<&str>,
    slot: &[u8],
) -> Result<(String, String), String> {
    let d = watch::decoder(info, as_spec).map_err(|e| e.to_string())?;
    let (m, raw) = watch::echo_msg(0, slot, &d, info);
    let json = serde_json::to_string(&m).map_err(|e| format!("JSON: {e}"))?;
    Ok((json, watch::render_echo(&m, &raw)))
}

/// What `ls` and `inspect` show from a header alone, as JSON: the type, the QoS and counters
/// of a topic, the dtype, shape and strides of an array (from the header: `info` is looked at
/// as a scoped object nobody uses, which is never attached), a pool's topic, and the sizes and
/// times as text.
pub fn header_views(info: &SegmentInfo) -> String {
    let detached = SegmentInfo {
        in_use: false,
        lifetime: Lifetime::Scoped,
        ..info.clone()
    };
    let budget = Budget::new(std::time::Duration::ZERO);
    let (array, failed) = survey::array_view(&detached, &budget);
    assert!(failed.is_none(), "a detached array view attached");
    let views = serde_json::json!({
        "type": survey::TypeView::from(&info.type_info),
        "lifetime": survey::lifetime_name(info.lifetime),
        "qos": survey::qos_from_header(info),
        "counters": survey::counters_from_header(info),
        "array": array,
        "pool": survey::pool_view(info),
        "stale": survey::is_stale(info),
        "size": output::size(info.total_size),
        "payload": output::size(info.payload_size),
        "created": output::utc(info.created_unix_ns),
        "age": output::age(info.created_unix_ns),
    });
    views.to_string()
}

/// The topic of a pool segment named `name`, as `ls` and `rm` find it.
pub fn pool_topic(name: &str) -> Option<&str> {
    survey::pool_topic(name)
}

/// The layout of an `--as` spec, printed back in the grammar (a spec that parses prints as a
/// spec that parses to the same layout).
pub fn parse_spec(s: &str) -> Result<String, String> {
    spec::parse(s)
        .map(|t| t.to_string())
        .map_err(|e| e.to_string())
}

/// The layout `echo` finds for a recorded Rust type name, printed in the spec grammar.
pub fn known_type(type_name: &str) -> Option<String> {
    spec::known_type(type_name).map(|t| t.to_string())
}
