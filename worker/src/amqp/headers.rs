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
/// Quorum queues count earlier deliveries of a message in this header.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

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
    header_text(props, DELIVERY_COUNT_HEADER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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
