//! What happens to a message after its attempt: the retry contract.
//!
//! - A success, or a failure of the message itself (it threw, bad JSON, …),
//!   is final: the outcome is published, then the message is acked.
//! - A failure of the worker's environment (`ERR_INTERNAL`, `ERR_POISONED`,
//!   …) hands the message back to its queue with `basic.reject`, which every
//!   RabbitMQ version counts towards the queue's delivery limit.
//! - `ERR_RETRY` (the handler threw a `RetryError`) and the codes of the
//!   key's `retry_on` are tried again after a delay: a copy goes to a delay
//!   queue, and the original is acked once the copy is confirmed.
//! - On the last attempt (`max_deliveries`), a failure that would have been
//!   tried again is published as the final outcome and the message is
//!   dead-lettered with the reason in its headers.
//!
//! Delays need no broker plugin: each key has quorum delay queues, one per
//! delay, whose queue TTL dead-letters every message back to the key's
//! queue. All messages of one delay queue wait equally long, so a long delay
//! never holds back a short one. Delays are rounded up to a 1-2-5 ladder
//! (1, 2, 5, 10, 20, 50 ms …), which bounds the number of delay queues.

use std::time::Duration;

use hyperlight_js_config::{MAX_RETRY_DELAY, RetryPolicy};
use lapin::types::{AMQPValue, FieldTable};

use crate::codes::{ErrorCode, environment_failure};
use crate::process::Outcome;

/// How a delivery is settled after its attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Publish the outcome, then ack.
    Finish,
    /// Hand the message back to its queue (`basic.reject` with requeue).
    Requeue,
    /// Try again after `delay`: a delayed copy, then ack the original.
    RetryAfter {
        /// At least this long.
        delay: Duration,
        /// Why the delay a `RetryError` asked for was not used as given (for the log).
        clamped: Option<String>,
    },
    /// The attempts ran out: publish the outcome, then dead-letter.
    GiveUp,
}

/// The decision for `outcome` on attempt `attempt` (from 1) of `max`.
pub fn decide(outcome: &Outcome, attempt: u32, max: u32, policy: &RetryPolicy) -> Decision {
    let Outcome::Failure(f) = outcome else {
        return Decision::Finish;
    };
    let last = attempt >= max;
    if environment_failure(f.code) {
        return if last {
            Decision::GiveUp
        } else {
            Decision::Requeue
        };
    }
    let asked = f.code == ErrorCode::Retry.as_str();
    if !(asked || policy.retry_on.iter().any(|c| c == f.code)) {
        return Decision::Finish;
    }
    if last {
        return Decision::GiveUp;
    }
    let (delay, clamped) = match (asked, f.retry_delay_ms) {
        (true, Some(ms)) => clamp(ms, attempt, policy),
        _ => (policy.delay_after(attempt), None),
    };
    Decision::RetryAfter { delay, clamped }
}

/// A `RetryError`'s `delayMs`, bounded to `[0, max_delay]`; not a number
/// falls back to the policy's delay for the attempt.
fn clamp(ms: f64, attempt: u32, policy: &RetryPolicy) -> (Duration, Option<String>) {
    let max = policy.max_delay;
    if ms.is_nan() {
        let d = policy.delay_after(attempt);
        return (
            d,
            Some(format!(
                "delayMs is not a number; using the policy's {} ms",
                d.as_millis()
            )),
        );
    }
    if ms < 0.0 {
        return (
            Duration::ZERO,
            Some(format!("delayMs {ms} is negative; using 0 ms")),
        );
    }
    if ms > max.as_millis() as f64 {
        return (
            max,
            Some(format!(
                "delayMs {ms} is over retry_max_delay_ms; using {} ms",
                max.as_millis()
            )),
        );
    }
    (Duration::from_millis(ms.ceil() as u64), None)
}

/// The delay queue a delay is served by: its TTL in ms, at least `delay`
/// (0 means no delay queue: the copy goes straight back to the key's queue).
pub fn bucket_ms(delay: Duration) -> u64 {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return 0;
    }
    let cap = MAX_RETRY_DELAY.as_millis() as u64;
    let mut decade = 1u64;
    loop {
        for step in [1, 2, 5] {
            let b = decade.saturating_mul(step);
            if b >= ms {
                return b.min(cap);
            }
        }
        if decade >= cap {
            return cap;
        }
        decade = decade.saturating_mul(10);
    }
}

/// The name of `key`'s delay queue with a TTL of `ms`.
pub fn delay_queue(key: &str, ms: u64) -> String {
    format!("{key}.delay-{ms}ms")
}

/// Arguments of a delay queue: a durable quorum queue whose messages expire
/// after `ms` and are dead-lettered, at least once, to `key`'s queue through
/// the default exchange.
pub fn delay_queue_arguments(key: &str, ms: u64) -> FieldTable {
    let text = |s: &str| AMQPValue::LongString(s.to_string().into());
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX)),
    );
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(key));
    // at-least-once dead-lettering needs reject-publish overflow.
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Failure;

    fn policy(retry_on: &[&str]) -> RetryPolicy {
        RetryPolicy {
            retry_on: retry_on.iter().map(|s| s.to_string()).collect(),
            delay: Duration::from_millis(100),
            backoff: 2.0,
            max_delay: Duration::from_millis(1000),
        }
    }

    fn failure(code: &'static str, delay: Option<f64>) -> Outcome {
        let mut f = Failure::new(code, "x");
        f.retry_delay_ms = delay;
        Outcome::Failure(f)
    }

    #[test]
    fn successes_and_message_failures_are_final() {
        let p = policy(&[]);
        assert_eq!(
            decide(&Outcome::Success("1".into()), 1, 3, &p),
            Decision::Finish
        );
        assert_eq!(
            decide(&failure("ERR_HANDLER_THREW", None), 1, 3, &p),
            Decision::Finish
        );
        assert_eq!(
            decide(&failure("ERR_CANCELLED", None), 1, 3, &p),
            Decision::Finish
        );
        assert_eq!(
            decide(&failure("ERR_HANDLER_THREW", None), 3, 3, &p),
            Decision::Finish
        );
    }

    #[test]
    fn environment_failures_are_requeued_until_the_last_attempt() {
        let p = policy(&[]);
        assert_eq!(
            decide(&failure("ERR_INTERNAL", None), 1, 3, &p),
            Decision::Requeue
        );
        assert_eq!(
            decide(&failure("ERR_POISONED", None), 2, 3, &p),
            Decision::Requeue
        );
        assert_eq!(
            decide(&failure("ERR_INTERNAL", None), 3, 3, &p),
            Decision::GiveUp
        );
        assert_eq!(
            decide(&failure("ERR_INTERNAL", None), 9, 3, &p),
            Decision::GiveUp
        );
    }

    #[test]
    fn retry_on_codes_back_off_exponentially_up_to_the_cap() {
        let p = policy(&["ERR_CANCELLED"]);
        let delays: Vec<Decision> = (1..=5)
            .map(|a| decide(&failure("ERR_CANCELLED", None), a, 6, &p))
            .collect();
        let ms: Vec<u128> = delays
            .iter()
            .map(|d| match d {
                Decision::RetryAfter {
                    delay,
                    clamped: None,
                } => delay.as_millis(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000]);
        assert_eq!(
            decide(&failure("ERR_CANCELLED", None), 6, 6, &p),
            Decision::GiveUp
        );
    }

    #[test]
    fn a_retry_error_delay_is_used_or_clamped_and_the_clamping_is_said() {
        let p = policy(&[]);
        let d = |ms| decide(&failure("ERR_RETRY", ms), 1, 3, &p);
        assert_eq!(
            d(Some(250.4)),
            Decision::RetryAfter {
                delay: Duration::from_millis(251),
                clamped: None
            }
        );
        assert_eq!(
            d(None),
            Decision::RetryAfter {
                delay: Duration::from_millis(100),
                clamped: None
            }
        );
        for (asked, expect) in [
            (-5.0, 0),
            (f64::NAN, 100),
            (1e300, 1000),
            (f64::INFINITY, 1000),
        ] {
            match d(Some(asked)) {
                Decision::RetryAfter {
                    delay,
                    clamped: Some(why),
                } => {
                    assert_eq!(delay.as_millis(), expect, "{asked}: {why}");
                }
                other => panic!("{asked}: {other:?}"),
            }
        }
        assert_eq!(
            decide(&failure("ERR_RETRY", Some(10.0)), 3, 3, &p),
            Decision::GiveUp
        );
    }

    #[test]
    fn delays_round_up_to_the_ladder_and_name_their_queue() {
        let b = |ms| bucket_ms(Duration::from_millis(ms));
        assert_eq!(
            [0, 1, 2, 3, 6, 10, 11, 199, 250, 1000, 4000, 60_001].map(b),
            [0, 1, 2, 5, 10, 10, 20, 200, 500, 1000, 5000, 100_000]
        );
        assert_eq!(b(86_400_000), 86_400_000);
        assert_eq!(b(u64::MAX), 86_400_000);
        assert_eq!(delay_queue("orders", 500), "orders.delay-500ms");
        let args = delay_queue_arguments("orders", 500);
        assert_eq!(
            args.inner().get("x-dead-letter-routing-key").unwrap(),
            &AMQPValue::LongString("orders".to_string().into())
        );
    }
}
