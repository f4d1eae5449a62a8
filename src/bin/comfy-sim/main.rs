//! `comfy-sim`: a ComfyUI 0.3.64 simulator for comfyd's tests and for trying comfyd without a GPU.
//!
//! It speaks ComfyUI's HTTP + websocket protocol as recorded in
//! `src/tests/fixtures/comfyui-protocol` (status broadcasts, per-client execution events,
//! history, uploads, caching, interrupts, validation errors) and writes real PNG files.
//! It stands alone: it does not use the comfyd library crate.
//!
//! # Layout
//! - `state.rs`: the shared state behind one lock (queue, history, sockets, cache, knobs)
//! - `server.rs`: HTTP routes (ComfyUI's, also under `/api`, and the `/sim/*` hooks)
//! - `ws.rs`: the websocket session actor
//! - `exec.rs`: the worker that runs prompts and emits events
//! - `catalog.rs`: the installed node classes and model files (`--without-node`, `--model`, ...)
//! - `nodes.rs`: node classes (`/object_info`) and prompt validation
//! - `files.rs`: upload, view and save-name rules
//! - `image.rs`: simulated images and PNG encoding
//! - `hostile.rs`: hostile mode (unsafe names, garbage, oversized and foreign frames)

mod catalog;
mod exec;
mod files;
mod hostile;
mod image;
mod nodes;
mod server;
mod state;
mod ws;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use crate::state::{Config, Dirs, Sim};

/// Command line of the simulator.
#[derive(Parser, Debug)]
#[command(
    name = "comfy-sim",
    about = "A ComfyUI simulator (HTTP + websocket) that needs no GPU"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: String,
    /// Port to listen on; 0 picks a free one (printed on stdout).
    #[arg(long, default_value_t = 8188)]
    port: u16,
    /// Holds input/, output/ and temp/ (default: a fresh temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Execution time of a prompt whose nodes all run, split over the nodes that run.
    #[arg(long, default_value_t = 50)]
    exec_ms: u64,
    /// Start with the worker paused (prompts queue, none runs).
    #[arg(long)]
    paused: bool,
    /// Behave like a hostile server for every prompt: a comma-separated list of `traversal`,
    /// `garbage-frames`, `oversized-frames`, `foreign-events` (see hostile.rs; `POST /sim/hostile`
    /// scripts the same per prompt).
    #[arg(long, value_parser = hostile::Hostile::parse)]
    hostile: Option<hostile::Hostile>,
    /// Run without the `Clean input and output file` node (as a ComfyUI lacking that custom node);
    /// the same as `--without-node "Clean input and output file"`.
    #[arg(long)]
    without_cleaner: bool,
    /// Run without this node class: absent from `/object_info`, and a prompt using it is refused
    /// as ComfyUI refuses an unknown class. Repeatable.
    #[arg(long = "without-node", value_name = "CLASS")]
    without_nodes: Vec<String>,
    /// Add a model file `FOLDER/FILE` that `/models/{folder}` lists (to the defaults). Repeatable.
    #[arg(long = "model", value_name = "FOLDER/FILE")]
    models: Vec<String>,
    /// Remove a default model file `FOLDER/FILE`, e.g.
    /// `checkpoints/v1-5-pruned-emaonly.safetensors`. Repeatable.
    #[arg(long = "without-model", value_name = "FOLDER/FILE")]
    without_models: Vec<String>,
}

/// A fresh directory under the system temp dir.
fn fresh_data_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "comfy-sim-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ))
}

/// Ends the process at once on SIGINT/SIGTERM: clients then see the socket drop without a close
/// frame (code 1006), as they did with the real ComfyUI.
async fn exit_on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received, exiting");
    std::process::exit(0);
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before anything reads the node classes (they are built once).
    catalog::set(
        catalog::Catalog::from_flags(
            &cli.without_nodes,
            cli.without_cleaner,
            &cli.models,
            &cli.without_models,
        )
        .map_err(anyhow::Error::msg)?,
    );
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let root = cli.data_dir.clone().unwrap_or_else(fresh_data_dir);
    let dirs = Dirs::create(root.clone())
        .with_context(|| format!("creating data dir {}", root.display()))?;
    let listener = TcpListener::bind((cli.listen.as_str(), cli.port))
        .with_context(|| format!("binding {}:{}", cli.listen, cli.port))?;
    let port = listener
        .local_addr()
        .context("reading the bound port")?
        .port();
    let sim = Arc::new(Sim::new(
        dirs,
        Config {
            exec_ms: cli.exec_ms,
            paused: cli.paused,
        },
        std::env::args().collect(),
    ));
    if let Some(h) = cli.hostile.clone() {
        sim.lock().hostile = h;
    }
    let server = server::start(sim, listener).context("starting the HTTP server")?;
    tracing::info!(data_dir = %root.display(), "data dir {}", root.display());
    let mut out = std::io::stdout();
    writeln!(out, "comfy-sim listening on http://{}:{port}", cli.listen)
        .context("writing to stdout")?;
    out.flush().context("flushing stdout")?;
    actix_rt::spawn(exit_on_signal());
    server.await.context("running the HTTP server")
}
