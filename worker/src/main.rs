//! `hyperlight-js-worker`: the command line. Everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hyperlight_js_worker::amqp::client::{self, PublishRequest};
use hyperlight_js_worker::amqp::replay::{self, ReplayRequest};
use hyperlight_js_worker::config::{BrokerConfig, WorkerConfig};
use hyperlight_js_worker::run::{Mode, Worker, shutdown_on_signals};
use hyperlight_js_worker::{WorkerError, telemetry};

/// Runs JavaScript event handlers in Hyperlight micro-VMs: consumes events from
/// RabbitMQ (or JSON lines on stdin) and publishes each handler's outcome.
#[derive(Debug, Parser)]
#[command(name = "hyperlight-js-worker", version, about)]
struct Cli {
    /// The worker's TOML configuration (HLJS__SECTION__KEY variables override it; AMQP_URL wins over [broker] url).
    #[arg(long, env = "HLJS_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Read events as JSON lines from standard input even when a broker is configured.
    #[arg(long, conflicts_with = "input")]
    stdin: bool,
    /// Read events as JSON lines from this file.
    #[arg(long)]
    input: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish one event to the events exchange; with --wait, print the outcome.
    Publish {
        /// Routing key (the handler).
        #[arg(long)]
        key: String,
        /// The event as JSON; `-` reads it from standard input.
        event: String,
        /// Wait for the outcome (RPC through reply_to/correlation_id) and print it.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait for the outcome.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        /// Events exchange (default: the config's, else hyperlight.events).
        #[arg(long)]
        exchange: Option<String>,
        /// Extra header, e.g. `x-cpu-timeout-ms=200` (repeatable).
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
    },
    /// Load the configuration as the worker does and compile every handler, without a broker; exit 2 on any error.
    CheckConfig,
    /// Move dead letters back to their key's queue, attempts reset; prints a JSON summary.
    Replay {
        /// Only the dead letters of this routing key.
        #[arg(long)]
        key: Option<String>,
        /// Move at most this many.
        #[arg(long)]
        limit: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&WorkerError::Io(e)),
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Some(Command::Publish {
                key,
                event,
                wait,
                timeout_secs,
                exchange,
                headers,
            }) => {
                publish(
                    cli.config,
                    key,
                    event,
                    wait,
                    timeout_secs,
                    exchange,
                    headers,
                )
                .await
            }
            Some(Command::Replay { key, limit }) => {
                replay(cli.config, ReplayRequest { key, limit }).await
            }
            Some(Command::CheckConfig) => check_config(cli.config).await,
            None => serve(cli.config, cli.stdin, cli.input).await,
        }
    });
    // A sandbox call still running after a drain timeout must not hold the
    // exit: its message already went back to the queue with the connection.
    runtime.shutdown_background();
    code
}

async fn serve(config: Option<PathBuf>, stdin: bool, input: Option<PathBuf>) -> ExitCode {
    let Some(path) = config else {
        eprintln!("error[ERR_INVALID_ARG]: --config PATH (or HLJS_CONFIG) is required");
        return ExitCode::from(2);
    };
    let config = match WorkerConfig::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(&e.into()),
    };
    let telemetry = match telemetry::init(&config.telemetry) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let mode = Mode::choose(&config, stdin, input);
    tracing::info!(config = %config.path.display(), mode = ?mode, handlers = config.handlers.len(), "starting");
    let result = Worker::new(config, mode).run(shutdown_on_signals()).await;
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn check_config(config: Option<PathBuf>) -> ExitCode {
    let Some(path) = config else {
        eprintln!("error[ERR_INVALID_ARG]: --config PATH (or HLJS_CONFIG) is required");
        return ExitCode::from(2);
    };
    match hyperlight_js_worker::check::check_config(&path).await {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error[{}]: {e}", e.code());
            ExitCode::from(2)
        }
    }
}

/// The broker settings of `config` (or the defaults), with `AMQP_URL` applied.
fn broker_settings(config: Option<&PathBuf>) -> Result<BrokerConfig, WorkerError> {
    let mut broker = match config {
        Some(path) => WorkerConfig::load(path)?.broker,
        None => BrokerConfig::default(),
    };
    if let Ok(url) = std::env::var("AMQP_URL")
        && !url.trim().is_empty()
    {
        broker.set_urls(&url);
    }
    if broker.endpoints().is_empty() {
        return Err(WorkerError::InvalidArgument(
            "no broker: set AMQP_URL (or [broker] url in the --config file)".into(),
        ));
    }
    Ok(broker)
}

async fn replay(config: Option<PathBuf>, request: ReplayRequest) -> ExitCode {
    let broker = match broker_settings(config.as_ref()) {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    let telemetry = match telemetry::init(&Default::default()) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let result = replay::replay(&broker, &request).await;
    telemetry.shutdown();
    match result {
        Ok(summary) => {
            println!("{}", serde_json::json!(summary));
            if summary.failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => fail(&e),
    }
}

async fn publish(
    config: Option<PathBuf>,
    key: String,
    event: String,
    wait: bool,
    timeout_secs: u64,
    exchange: Option<String>,
    headers: Vec<String>,
) -> ExitCode {
    let mut broker = match broker_settings(config.as_ref()) {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    if let Some(x) = exchange {
        broker.events_exchange = x;
    }
    let body = if event == "-" {
        let mut s = String::new();
        if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
            return fail(&WorkerError::Io(e));
        }
        s
    } else {
        event
    };
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&body) {
        return fail(&WorkerError::InvalidArgument(format!(
            "the event is not valid JSON: {e}"
        )));
    }
    let mut pairs = Vec::new();
    for h in headers {
        match h.split_once('=') {
            Some((k, v)) if !k.is_empty() => pairs.push((k.to_string(), v.to_string())),
            _ => {
                return fail(&WorkerError::InvalidArgument(format!(
                    "--header {h:?} is not NAME=VALUE"
                )));
            }
        }
    }
    let request = PublishRequest {
        key,
        body: body.trim().as_bytes().to_vec(),
        headers: pairs,
        wait: wait.then(|| Duration::from_secs(timeout_secs)),
    };
    match client::publish(&broker, request).await {
        Ok(Some(reply)) => {
            println!("{}", reply.body);
            if reply.error_code.is_some() {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Ok(None) => {
            eprintln!("published");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &WorkerError) -> ExitCode {
    eprintln!("error[{}]: {e}", e.code());
    match e {
        WorkerError::Config(_) | WorkerError::Pool { .. } | WorkerError::InvalidArgument(_) => {
            ExitCode::from(2)
        }
        _ => ExitCode::FAILURE,
    }
}
