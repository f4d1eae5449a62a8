//! `comfyd`: serve the API (default), or check the workflows.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use comfyd::config::Settings;

#[derive(Parser)]
#[command(
    name = "comfyd",
    version,
    about = "A fleet of ComfyUI servers behind one reliable HTTP API"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Store again what an outage left in the fallback folder, and mark those tasks done.
    Reupload,
    /// Workflow tools.
    Workflows {
        #[command(subcommand)]
        command: WorkflowCommand,
    },
}

#[derive(Subcommand)]
enum WorkflowCommand {
    /// Validate every workflow offline and, with --backend, against that ComfyUI's /object_info.
    Check {
        /// Base URL of a ComfyUI server, e.g. http://127.0.0.1:8188
        #[arg(long)]
        backend: Option<String>,
        /// Workflows folder (default: workflows.dir of the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // Before any thread starts: glibc reads these settings once per arena.
    comfyd::budget::tune_allocator();
    let cli = Cli::parse();
    // One TLS crypto library for every client (awc to ComfyUI and webhooks, the S3 SDK): without a
    // process-wide default, awc's rustls setup panics on the first https:// URL.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("comfyd: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = actix_web::rt::System::new().block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => comfyd::startup::serve(settings)
                .await
                .map(|_| ExitCode::SUCCESS),
            Command::Reupload => {
                let r = comfyd::reupload::run(&settings).await?;
                println!(
                    "{} outputs stored, {} tasks done, {} still failing",
                    r.stored, r.tasks_done, r.still_failing
                );
                Ok(if r.still_failing == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            Command::Workflows {
                command: WorkflowCommand::Check { backend, dir },
            } => {
                let dir = dir.unwrap_or(settings.workflows.dir);
                Ok(comfyd::workflow_check::run(&dir, backend.as_deref()).await)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("comfyd: {e:#}");
            tracing::error!(error.cause_chain = ?e, "comfyd stopped with an error");
            ExitCode::FAILURE
        }
    }
}
