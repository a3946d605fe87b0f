//! Reading and writing AMQP message headers: requested limits, the quorum
//! queue's delivery count, W3C trace context.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::process::{Failure, RequestedLimits, parse_timeout_ms};

/// Header with the CPU-time limit a message asks for, in milliseconds.
pub const CPU_TIMEOUT_HEADER: &str = "x-cpu-timeout-ms";
/// Header with the wall-clock limit a message asks for, in milliseconds.
pub const WALL_TIMEOUT_HEADER: &str = "x-wall-timeout-ms";
/// Outcome header: `ok` or `error`.
pub const OUTCOME_HEADER: &str = "x-hljs-outcome";
/// Outcome header with the error code of a failure.
pub const ERROR_CODE_HEADER: &str = "x-hljs-error-code";
/// Outcome header with the routing key the event was processed under.
pub const KEY_HEADER: &str = "x-hljs-key";
/// Outcome and dead-letter header with the error message of a failure.
pub const ERROR_MESSAGE_HEADER: &str = "x-hljs-error-message";
/// Attempts already made at a message: on the copies the worker republishes
/// for a delayed retry (attempts before the copy) and on dead letters (all of them).
pub const ATTEMPTS_HEADER: &str = "x-hljs-attempts";
/// Outcome header: which attempt (from 1) produced the outcome.
pub const ATTEMPT_HEADER: &str = "x-hljs-attempt";
/// Outcome header: CPU time of the handler call in milliseconds (a double).
pub const CPU_MS_HEADER: &str = "x-hljs-cpu-ms";
/// Outcome header: wall-clock time of the handler call in milliseconds (a double).
pub const WALL_MS_HEADER: &str = "x-hljs-wall-ms";
/// Outcome header, only when a limit or a kill stopped the call: `cpu`, `wall` or `kill`.
pub const TERMINATED_BY_HEADER: &str = "x-hljs-terminated-by";
/// Outcome header: the version (short hash of the code, see
/// [`crate::version`]) of the handler that produced the outcome.
pub const HANDLER_VERSION_HEADER: &str = "x-hljs-handler-version";
/// Quorum queues count earlier failed deliveries of a message in this header
/// (every return on 3.x; on 4.x returns by `basic.reject` and closed channels, not `basic.nack`).
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// RabbitMQ 4.x quorum queues count every earlier acquisition of a message here.
pub const ACQUIRED_COUNT_HEADER: &str = "x-acquired-count";

/// Headers the broker or the worker set for their own bookkeeping: dropped
/// from a copy the worker republishes, so the copy starts its counts afresh.
const BOOKKEEPING: &[&str] = &[
    DELIVERY_COUNT_HEADER,
    ACQUIRED_COUNT_HEADER,
    ATTEMPTS_HEADER,
    ATTEMPT_HEADER,
    CPU_MS_HEADER,
    WALL_MS_HEADER,
    TERMINATED_BY_HEADER,
    HANDLER_VERSION_HEADER,
    ERROR_CODE_HEADER,
    ERROR_MESSAGE_HEADER,
    KEY_HEADER,
    OUTCOME_HEADER,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

/// A header as text, whatever AMQP type the publisher chose.
pub fn header_text(props: &BasicProperties, name: &str) -> Option<String> {
    let value = props.headers().as_ref()?.inner().get(name)?;
    value_text(value)
}

fn value_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::ShortShortInt(v) => v.to_string(),
        AMQPValue::ShortShortUInt(v) => v.to_string(),
        AMQPValue::ShortInt(v) => v.to_string(),
        AMQPValue::ShortUInt(v) => v.to_string(),
        AMQPValue::LongInt(v) => v.to_string(),
        AMQPValue::LongUInt(v) => v.to_string(),
        AMQPValue::LongLongInt(v) => v.to_string(),
        AMQPValue::Timestamp(v) => v.to_string(),
        _ => return None,
    })
}

/// Limits asked for in the headers (`ERR_INVALID_ARG` when one is not a positive integer).
pub fn requested_limits(props: &BasicProperties) -> Result<RequestedLimits, Failure> {
    let cpu = header_text(props, CPU_TIMEOUT_HEADER)
        .map(|v| parse_timeout_ms(CPU_TIMEOUT_HEADER, &v))
        .transpose()?;
    let wall = header_text(props, WALL_TIMEOUT_HEADER)
        .map(|v| parse_timeout_ms(WALL_TIMEOUT_HEADER, &v))
        .transpose()?;
    Ok(RequestedLimits { cpu, wall })
}

/// Earlier deliveries of this message (0 on the first).
pub fn delivery_count(props: &BasicProperties) -> u64 {
    count(props, DELIVERY_COUNT_HEADER)
}

fn count(props: &BasicProperties, name: &str) -> u64 {
    header_text(props, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Attempts made at this message before this delivery: the worker's own count
/// on a republished copy plus the broker's count of this copy's earlier
/// deliveries. The broker counts differently per version (see
/// [`DELIVERY_COUNT_HEADER`]); the larger of its two counters is taken, so
/// every redelivery counts on 3.x and 4.x alike.
pub fn prior_attempts(props: &BasicProperties) -> u32 {
    let broker = count(props, DELIVERY_COUNT_HEADER).max(count(props, ACQUIRED_COUNT_HEADER));
    let total = count(props, ATTEMPTS_HEADER).saturating_add(broker);
    u32::try_from(total).unwrap_or(u32::MAX)
}

/// The message's headers without the broker's and the worker's bookkeeping
/// (see [`prior_attempts`]), for a copy the worker republishes.
pub fn without_bookkeeping(props: &BasicProperties) -> FieldTable {
    let mut out = FieldTable::default();
    if let Some(headers) = props.headers() {
        for (k, v) in headers.inner() {
            if !BOOKKEEPING.contains(&k.as_str()) {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// The message's headers as a JSON object for the handler's `ctx.headers`:
/// strings, numbers and booleans as themselves; tables, arrays and byte
/// arrays are left out.
pub fn headers_json(props: &BasicProperties) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value;
    let mut out = serde_json::Map::new();
    let Some(headers) = props.headers() else {
        return out;
    };
    for (k, v) in headers.inner() {
        let json = match v {
            AMQPValue::Boolean(b) => Value::Bool(*b),
            AMQPValue::Float(f) => {
                serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
            }
            AMQPValue::Double(f) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
            AMQPValue::LongString(_) | AMQPValue::ShortString(_) => match value_text(v) {
                Some(t) => Value::String(t),
                None => continue,
            },
            other => match value_text(other).and_then(|t| t.parse::<i64>().ok()) {
                Some(n) => Value::from(n),
                None => continue,
            },
        };
        out.insert(k.as_str().to_string(), json);
    }
    out
}

/// Reads W3C trace context (`traceparent`, `tracestate`) from headers.
pub struct HeaderExtractor<'a>(pub Option<&'a FieldTable>);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0?.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|t| t.inner().keys().map(ShortString::as_str).collect())
            .unwrap_or_default()
    }
}

/// Writes W3C trace context into headers.
pub struct HeaderInjector<'a>(pub &'a mut FieldTable);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.to_string().into(), AMQPValue::LongString(value.into()));
    }
}

/// A text header value.
pub fn text_value(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.to_string().into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn props(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        BasicProperties::default().with_headers(t)
    }

    #[test]
    fn limits_come_from_integer_or_text_headers() {
        let p = props(&[
            (CPU_TIMEOUT_HEADER, AMQPValue::LongLongInt(200)),
            (WALL_TIMEOUT_HEADER, text_value("900")),
        ]);
        let l = requested_limits(&p).unwrap();
        assert_eq!(l.cpu, Some(Duration::from_millis(200)));
        assert_eq!(l.wall, Some(Duration::from_millis(900)));
        assert_eq!(
            requested_limits(&BasicProperties::default()).unwrap(),
            RequestedLimits::default()
        );
        let bad = props(&[(CPU_TIMEOUT_HEADER, text_value("soon"))]);
        assert_eq!(requested_limits(&bad).unwrap_err().code, "ERR_INVALID_ARG");
    }

    #[test]
    fn prior_attempts_add_the_workers_count_to_the_larger_broker_count() {
        assert_eq!(prior_attempts(&BasicProperties::default()), 0);
        // 3.x: only x-delivery-count.
        assert_eq!(
            prior_attempts(&props(&[(
                DELIVERY_COUNT_HEADER,
                AMQPValue::LongLongInt(2)
            )])),
            2
        );
        // 4.x after one nack (not counted as failed) and one reject.
        let p = props(&[
            (DELIVERY_COUNT_HEADER, AMQPValue::LongLongInt(1)),
            (ACQUIRED_COUNT_HEADER, AMQPValue::LongLongInt(2)),
            (ATTEMPTS_HEADER, text_value("3")),
        ]);
        assert_eq!(prior_attempts(&p), 5);
        let mut t = p.headers().clone().unwrap();
        t.insert("x-tenant".into(), text_value("acme"));
        t.insert("x-death".into(), AMQPValue::LongLongInt(1));
        let kept = without_bookkeeping(&p.with_headers(t));
        assert_eq!(
            kept.inner().keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-tenant"]
        );
    }

    #[test]
    fn headers_reach_the_handler_as_json_scalars() {
        let p = props(&[
            ("tenant", text_value("acme")),
            ("n", AMQPValue::LongInt(7)),
            ("flag", AMQPValue::Boolean(true)),
            ("table", AMQPValue::FieldTable(FieldTable::default())),
        ]);
        let j = headers_json(&p);
        assert_eq!(j["tenant"], "acme");
        assert_eq!(j["n"], 7);
        assert_eq!(j["flag"], true);
        assert!(!j.contains_key("table"));
    }

    #[test]
    fn delivery_count_defaults_to_zero() {
        assert_eq!(delivery_count(&BasicProperties::default()), 0);
        assert_eq!(
            delivery_count(&props(&[(
                DELIVERY_COUNT_HEADER,
                AMQPValue::LongLongInt(2)
            )])),
            2
        );
    }
}
