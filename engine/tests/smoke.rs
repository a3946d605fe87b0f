use hyperlight_js_engine::*;
use serde_json::json;
use std::time::Instant;

#[test]
fn smoke() {
    let t = Instant::now();
    let proto = SandboxBuilder::new().build().unwrap();
    eprintln!("build {:?}", t.elapsed());
    let t = Instant::now();
    let mut js = proto.load_runtime().unwrap();
    eprintln!("load_runtime {:?}", t.elapsed());
    js.add_handler("greet", "function handler(event) { event.message = 'Hello, ' + event.name + '!'; console.log('hi', event); return event; }").unwrap();
    let t = Instant::now();
    let mut loaded = js.get_loaded_sandbox().unwrap();
    eprintln!("get_loaded {:?}", t.elapsed());
    for _ in 0..3 {
        let t = Instant::now();
        let r = loaded.call_handler("greet", &json!({"name": "World"}), &CallOptions::default()).unwrap();
        eprintln!("call {:?} {r}", t.elapsed());
    }
}
