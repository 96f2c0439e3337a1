//! Log output of the long-running processes (`serve`, `fd-holder`): the
//! usual `tracing` text, or JSON lines shaped like the Go stargz-snapshotter's
//! (containerd's `log` package, i.e. logrus' JSON formatter), so that a node's
//! log pipeline parses either daemon unchanged.
//!
//! A JSON line is one object with `level` (logrus names: `trace`, `debug`,
//! `info`, `warning`, `error`, `fatal`), `msg`, `time` (RFC 3339, nanoseconds
//! always nine digits, UTC) and every field of the event and of its spans at
//! the top level: strings as strings, numbers and booleans as such. Keys come
//! sorted, as Go's encoder writes a map; a field named `level`, `msg` or
//! `time` becomes `fields.level`… as logrus renames it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Installs the global subscriber writing to stderr in `format`.
pub fn init(filter: EnvFilter, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(LogrusJson)
            .init(),
    }
}

/// Writes `err` to stderr as a `fatal` JSON line (what the Go daemon logs
/// before it exits on a start-up error), for errors that end `serve`.
pub fn fatal(msg: &str, err: &anyhow::Error) {
    let mut obj = BTreeMap::new();
    obj.insert("error".to_owned(), Value::String(format!("{err:#}")));
    eprintln!("{}", logrus_line("fatal", msg, obj, SystemTime::now()));
}

/// The logrus name of a tracing level.
fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

/// One JSON line (without the newline) from the level, message and fields.
fn logrus_line(
    level: &str,
    msg: &str,
    mut fields: BTreeMap<String, Value>,
    time: SystemTime,
) -> String {
    for key in ["level", "msg", "time"] {
        if let Some(v) = fields.remove(key) {
            fields.insert(format!("fields.{key}"), v);
        }
    }
    fields.insert("level".into(), Value::String(level.into()));
    fields.insert("msg".into(), Value::String(msg.into()));
    fields.insert("time".into(), Value::String(rfc3339_nanos(time)));
    // A BTreeMap serialises in key order whatever serde_json's features.
    serde_json::to_string(&fields).unwrap_or_else(|e| {
        format!("{{\"level\":\"error\",\"msg\":\"log line not encodable: {e}\"}}")
    })
}

/// `time` in UTC as `2006-01-02T15:04:05.000000000Z` (Go's
/// `RFC3339NanoFixed`, which containerd's log package uses).
pub fn rfc3339_nanos(time: SystemTime) -> String {
    let (secs, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
            if n == 0 {
                (-s, 0)
            } else {
                (-s - 1, 1_000_000_000 - n)
            }
        }
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of `days` since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Event formatter writing logrus-shaped JSON lines (see the module docs).
/// Span fields are read as recorded by [`JsonFields`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LogrusJson;

impl<S, N> FormatEvent<S, N> for LogrusJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let time = SystemTime::now();
        let mut visitor = FieldMap::default();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(recorded) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(serde_json::Value::Object(map)) =
                    serde_json::from_str::<Value>(&recorded.fields)
                {
                    visitor.fields.extend(map);
                }
            }
        }
        event.record(&mut visitor);
        let level = level_name(event.metadata().level());
        let line = logrus_line(
            level,
            visitor.message.as_deref().unwrap_or(""),
            visitor.fields,
            time,
        );
        writeln!(writer, "{line}")
    }
}

/// The fields of an event: `message` apart, the rest as JSON values.
#[derive(Default)]
struct FieldMap {
    message: Option<String>,
    fields: BTreeMap<String, Value>,
}

impl FieldMap {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            // What `tracing-log` adds to records of the `log` crate: logrus
            // has no such keys.
            "log.target" | "log.module_path" | "log.file" | "log.line" => {}
            name => {
                self.fields.insert(name.to_owned(), value);
            }
        }
    }
}

impl Visit for FieldMap {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let v = i64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field, v);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = u64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field, v);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // Not finite: JSON has no such number; keep the text.
        let v = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.put(field, v);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn time_is_rfc3339_with_nine_digit_nanos() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        assert_eq!(rfc3339_nanos(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(at(1_796_289_601, 123_456_789)),
            "2026-12-03T09:20:01.123456789Z"
        );
        assert_eq!(
            rfc3339_nanos(at(951_868_799, 5)),
            "2000-02-29T23:59:59.000000005Z"
        );
        assert_eq!(
            rfc3339_nanos(UNIX_EPOCH - Duration::from_millis(1)),
            "1969-12-31T23:59:59.999000000Z"
        );
    }

    #[test]
    fn line_has_logrus_keys_sorted_and_renames_clashes() {
        let mut fields = BTreeMap::new();
        fields.insert("remote-snapshot-prepared".into(), Value::from("false"));
        fields.insert("key".into(), Value::from("k"));
        fields.insert("msg".into(), Value::from("clash"));
        fields.insert("mounts".into(), Value::from(3));
        let line = logrus_line("warning", "hello \"x\"", fields, UNIX_EPOCH);
        assert_eq!(
            line,
            r#"{"fields.msg":"clash","key":"k","level":"warning","mounts":3,"msg":"hello \"x\"","remote-snapshot-prepared":"false","time":"1970-01-01T00:00:00.000000000Z"}"#
        );
    }

    /// Captures what a subscriber writes.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_and_span_fields_come_out_flat() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_writer(move || out.clone())
            .fmt_fields(JsonFields::new())
            .event_format(LogrusJson)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("layer", digest = "sha256:ab", depth = 2);
            let _entered = span.enter();
            tracing::info!(
                key = %"default/1/k", reason = %"not eStargz", "remote-snapshot-prepared" = "false",
                "falling back to a local snapshot"
            );
            tracing::warn!(retries = 3u64, ok = false, ratio = 0.5, "slow");
        });
        let text = String::from_utf8(buf.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        let lines: Vec<serde_json::Map<String, Value>> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["level"], "info");
        assert_eq!(first["msg"], "falling back to a local snapshot");
        assert_eq!(first["remote-snapshot-prepared"], "false");
        assert_eq!(first["key"], "default/1/k");
        assert_eq!(first["reason"], "not eStargz");
        assert_eq!(first["digest"], "sha256:ab");
        assert_eq!(first["depth"], 2);
        assert!(
            first["time"]
                .as_str()
                .is_some_and(|t| t.len() == 30 && t.ends_with('Z'))
        );
        let second = &lines[1];
        assert_eq!(second["level"], "warning");
        assert_eq!(second["retries"], 3);
        assert_eq!(second["ok"], false);
        assert_eq!(second["ratio"], 0.5);
        assert_eq!(second["digest"], "sha256:ab");
    }
}
