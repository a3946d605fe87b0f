//! The embedded default: JSON lines in, outcome lines out, through the same
//! pools, limits and codes as the broker path.
//!
//! Input, one object per line: `{"key": "greet", "event": {...}}`, with
//! optional `"id"` (echoed back), `"cpu_timeout_ms"` and `"wall_timeout_ms"`.
//! Output, one line per input line, in input order:
//! `{"line":1,"key":"greet","result":{...}}` or
//! `{"line":2,"key":"greet","error":{"code":"ERR_…","message":"…"}}`.
//! Blank lines are skipped; a line that is not UTF-8 gets an
//! `ERR_INVALID_JSON` outcome and the run goes on. Lines run concurrently up
//! to the pools' size. A handler's `ctx` is `{key, messageId, attempt: 1,
//! headers: {}}`, `messageId` being the line's `"id"` when it is a string,
//! else `line-<n>`; there are no retries (a `RetryError` is an `ERR_RETRY`
//! outcome).

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, field, info, info_span};

use crate::error::WorkerError;
use crate::process::{
    ERR_INVALID_ARG, ERR_INVALID_JSON, Failure, Outcome, Processor, Request, RequestedLimits,
    parse_timeout_ms,
};

/// Counts of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines processed.
    pub lines: u64,
    /// Of which failed.
    pub failures: u64,
}

/// Reads `input` to its end (or until `shutdown`), writing one outcome line per event line.
pub async fn run<R, W>(
    processor: Arc<Processor>,
    input: R,
    mut output: W,
    shutdown: CancellationToken,
) -> Result<Summary, WorkerError>
where
    R: AsyncBufRead + Unpin + Send,
    W: AsyncWrite + Unpin,
{
    let concurrency = processor.total_pool_size().max(1);
    // Lines as bytes: one that is not UTF-8 is that line's failure, not the run's.
    let lines = futures_util::stream::unfold(input.split(b'\n'), |mut lines| async move {
        match lines.next_segment().await {
            Ok(Some(mut line)) => {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Some((Ok(line), lines))
            }
            Ok(None) => None,
            Err(e) => Some((Err(e), lines)),
        }
    });
    let outcomes = lines
        .take_until(shutdown.cancelled_owned())
        .enumerate()
        .filter(|(_, line)| {
            std::future::ready(!matches!(line, Ok(l) if l.iter().all(u8::is_ascii_whitespace)))
        })
        .map(|(i, line)| {
            let processor = Arc::clone(&processor);
            async move {
                match line {
                    Ok(line) => Ok(process_line(&processor, i as u64 + 1, &line).await),
                    Err(e) => Err(e),
                }
            }
        })
        .buffered(concurrency);
    let mut outcomes = std::pin::pin!(outcomes);
    let mut summary = Summary::default();
    while let Some(result) = outcomes.next().await {
        let (text, failed) = result?;
        summary.lines += 1;
        summary.failures += u64::from(failed);
        output.write_all(text.as_bytes()).await?;
        output.write_all(b"\n").await?;
        output.flush().await?;
    }
    info!(
        lines = summary.lines,
        failures = summary.failures,
        "input done"
    );
    Ok(summary)
}

/// One line → (outcome line, whether it failed).
async fn process_line(processor: &Processor, line_no: u64, line: &[u8]) -> (String, bool) {
    let started = Instant::now();
    let parsed = match std::str::from_utf8(line) {
        Ok(text) => parse_line(text),
        Err(e) => Err(Failure::new(
            ERR_INVALID_JSON,
            format!("line {line_no} is not UTF-8: {e}"),
        )),
    };
    let key = parsed.as_ref().ok().map(|p| p.key.clone());
    let id = parsed.as_ref().ok().and_then(|p| p.id.clone());
    // The line's "id" when it is a string, else the line number: stable across reruns.
    let message_id = match &id {
        Some(Value::String(s)) => s.clone(),
        _ => format!("line-{line_no}"),
    };
    let span = info_span!(
        "message",
        key = key.as_deref().unwrap_or(""),
        message_id = %message_id,
        line = line_no,
        outcome = field::Empty
    );
    let (outcome, version) = async {
        let (outcome, version) = match parsed {
            Ok(p) => {
                let context = serde_json::json!({
                    "key": p.key,
                    "messageId": message_id,
                    "attempt": 1,
                    "headers": {},
                });
                let processed = processor
                    .process_with_stats(Request {
                        key: p.key,
                        body: p.body,
                        limits: p.limits,
                        context: Some(context),
                    })
                    .await;
                (processed.outcome, processed.version)
            }
            Err(f) => (Outcome::Failure(f), None),
        };
        Span::current().record("outcome", outcome.label());
        (outcome, version)
    }
    .instrument(span)
    .await;
    if let Some(k) = &key {
        let metrics = processor.metrics();
        metrics
            .messages
            .with_label_values(&[
                k.as_str(),
                outcome.label(),
                version.as_deref().unwrap_or(""),
            ])
            .inc();
        metrics
            .message_seconds
            .with_label_values(&[k.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    let mut text = format!(
        "{{\"line\":{line_no},\"key\":{}",
        json_string_or_null(key.as_deref())
    );
    if let Some(id) = id {
        text.push_str(",\"id\":");
        text.push_str(&id.to_string());
    }
    let failed = match &outcome {
        Outcome::Success(json) => {
            text.push_str(",\"result\":");
            text.push_str(json);
            false
        }
        Outcome::Failure(f) => {
            let error = serde_json::json!({ "code": f.code, "message": f.message });
            text.push_str(",\"error\":");
            text.push_str(&error.to_string());
            true
        }
    };
    text.push('}');
    (text, failed)
}

struct Line {
    key: String,
    id: Option<Value>,
    body: Vec<u8>,
    limits: RequestedLimits,
}

fn parse_line(line: &str) -> Result<Line, Failure> {
    let value: Value = serde_json::from_str(line)
        .map_err(|e| Failure::new(ERR_INVALID_JSON, format!("the line is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(Failure::new(
            ERR_INVALID_ARG,
            "a line must be an object like {\"key\": \"greet\", \"event\": {...}}",
        ));
    };
    let key = match obj.remove("key") {
        Some(Value::String(k)) if !k.is_empty() => k,
        _ => {
            return Err(Failure::new(
                ERR_INVALID_ARG,
                "the line has no \"key\" string",
            ));
        }
    };
    let event = obj.remove("event").ok_or_else(|| {
        Failure::new(
            ERR_INVALID_ARG,
            format!("the line for '{key}' has no \"event\""),
        )
    })?;
    let mut limits = RequestedLimits::default();
    for (field, slot) in [
        ("cpu_timeout_ms", &mut limits.cpu),
        ("wall_timeout_ms", &mut limits.wall),
    ] {
        if let Some(v) = obj.get(field) {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            *slot = Some(parse_timeout_ms(field, &text)?);
        }
    }
    let body =
        serde_json::to_vec(&event).map_err(|e| Failure::new(ERR_INVALID_JSON, e.to_string()))?;
    Ok(Line {
        key,
        id: obj.remove("id"),
        body,
        limits,
    })
}

fn json_string_or_null(s: Option<&str>) -> String {
    match s {
        Some(s) => Value::String(s.to_string()).to_string(),
        None => "null".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::process::ERR_UNKNOWN_HANDLER;
    use std::time::Duration;

    #[tokio::test]
    async fn a_line_that_is_not_utf8_fails_alone() {
        // Only parse failures here (no sandbox): an empty processor suffices.
        let processor = Arc::new(
            Processor::load(&[], crate::metrics::Metrics::new())
                .await
                .unwrap(),
        );
        let input: &[u8] =
            b"{\"key\":\"a\",\"event\":1}\n\xff\xfe\n\n{\"key\":\"b\",\"event\":2}\r\n";
        let mut out = Vec::new();
        let summary = run(processor, input, &mut out, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            summary,
            Summary {
                lines: 3,
                failures: 3
            }
        );
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["error"]["code"], ERR_UNKNOWN_HANDLER);
        assert_eq!(lines[1]["line"], 2);
        assert_eq!(lines[1]["error"]["code"], ERR_INVALID_JSON);
        assert!(
            lines[1]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("UTF-8")
        );
        assert_eq!(lines[2]["line"], 4);
        assert_eq!(lines[2]["key"], "b");
    }

    #[test]
    fn lines_parse_key_event_id_and_limits() {
        let l = parse_line(r#"{"key":"greet","event":{"name":"W"},"id":7,"cpu_timeout_ms":50}"#)
            .unwrap();
        assert_eq!(l.key, "greet");
        assert_eq!(l.id, Some(Value::from(7)));
        assert_eq!(l.body, br#"{"name":"W"}"#);
        assert_eq!(l.limits.cpu, Some(Duration::from_millis(50)));
        assert_eq!(parse_line("{nope").err().unwrap().code, ERR_INVALID_JSON);
        assert_eq!(parse_line("[1]").err().unwrap().code, ERR_INVALID_ARG);
        assert_eq!(
            parse_line(r#"{"event":{}}"#).err().unwrap().code,
            ERR_INVALID_ARG
        );
        assert_eq!(
            parse_line(r#"{"key":"k"}"#).err().unwrap().code,
            ERR_INVALID_ARG
        );
        assert_eq!(
            parse_line(r#"{"key":"k","event":1,"wall_timeout_ms":0}"#)
                .err()
                .unwrap()
                .code,
            ERR_INVALID_ARG
        );
    }
}
