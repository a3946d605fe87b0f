//! Every message starts from the snapshot's exact memory: after a restore,
//! nothing the previous message wrote is left, in pages of any kind — the
//! JavaScript heap, guest statics, a native heap block, the user stack and
//! the transport arena — however the guest kernel served the faults that
//! wrote them (the copy-on-write fast path included).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hyperlight_js_engine::{CallOptions, GuestMode, SandboxBuilder};
use serde_json::{Value, json};

/// Remembers the previous event's mark in a global, and fills heap pages with it.
const MARK: &str = r#"
function handler(e) {
  const seen = globalThis.mark === undefined ? null : globalThis.mark;
  globalThis.mark = e.mark;
  globalThis.pages = [];
  for (let i = 0; i < 64; i++) globalThis.pages.push(new Array(512).fill(e.mark + i));
  return { seen };
}
"#;

fn places(report: &str) -> Vec<(String, bool)> {
    report
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k != "wrote")
        .map(|(k, v)| (k.to_owned(), v == "1"))
        .collect()
}

#[test]
fn after_a_restore_no_page_remembers_the_previous_message() {
    assert!(
        hyperlight_js_engine::hypervisor_available(),
        "needs /dev/kvm"
    );
    let mut js = SandboxBuilder::new()
        .guest_mode(GuestMode::User)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap();
    js.add_handler("mark", MARK).unwrap();
    let mut sb = js.get_loaded_sandbox().unwrap();
    // The scribble's heap block is allocated by its first call: before the snapshot.
    sb.scribble("", "").unwrap();
    let snap = sb.snapshot().unwrap();
    let opts = CallOptions::default();
    let mark = |sb: &mut hyperlight_js_engine::LoadedJSSandbox, m: &str| -> Value {
        sb.call_handler("mark", &json!({ "mark": m }), &opts)
            .unwrap()["seen"]
            .clone()
    };
    let all = |report: &str, want: bool| {
        let p = places(report);
        assert_eq!(p.len(), 4, "{report}");
        for (place, found) in p {
            assert_eq!(found, want, "{place} in {report:?}");
        }
    };

    for round in 0..3 {
        let (m1, m2, m3) = (
            format!("r{round}-one"),
            format!("r{round}-two"),
            format!("r{round}-three"),
        );
        sb.restore(&snap).unwrap();
        assert_eq!(mark(&mut sb, &m1), Value::Null);
        all(&sb.scribble(&m1, "never-written").unwrap(), false);
        // Warm, the writes are there: the check can see them.
        all(&sb.scribble(&m2, &m1).unwrap(), true);
        assert_eq!(mark(&mut sb, &m2), json!(m1));
        // After a restore, none of them is.
        sb.restore(&snap).unwrap();
        all(&sb.scribble(&m3, &m2).unwrap(), false);
        assert_eq!(mark(&mut sb, &m3), Value::Null);
    }
}
