//! `comfyd`: serve the API (default), or run an operator command (workflows, keys, releases).

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
    /// API keys (see README, API keys).
    Keys {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Releases: immutable snapshots of the workflows folder (see README, Releases).
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
}

#[derive(Subcommand)]
enum ReleaseCommand {
    /// Snapshot the workflows folder into a release (the same content twice is one release).
    Publish {
        /// A development ComfyUI whose environment is recorded; refused if it lacks what the
        /// workflows need. E.g. http://dev-comfyui:8188
        #[arg(long)]
        from: Option<String>,
        /// A note kept with the release.
        #[arg(long)]
        note: Option<String>,
        /// Workflows folder (default: workflows.dir of the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The releases, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
    /// One release, with its files, as JSON.
    Show { version: i32 },
    /// Check every configured backend against a release now (recorded); exit 0 when all are ready.
    Check {
        version: i32,
        /// How long each smoke run may take, in seconds (1 to 600).
        #[arg(long, default_value_t = 60)]
        smoke_timeout_secs: u64,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Make a key and store its hash in the database; prints the key once.
    Add {
        #[arg(long)]
        name: String,
        /// submit or admin
        #[arg(long)]
        scope: String,
    },
    /// Make a key and print it with its [auth] configuration entry; stores nothing.
    Generate {
        #[arg(long)]
        name: String,
        /// submit or admin
        #[arg(long)]
        scope: String,
    },
    /// The keys in the database (their names, scopes and ids, never the keys).
    List,
    /// Revoke the key with this id, or every key with this name.
    Revoke { id_or_name: String },
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
                let r = comfyd::cli::reupload::run(&settings).await?;
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
                Ok(comfyd::cli::workflows_check::run(&dir, backend.as_deref()).await)
            }
            Command::Keys { command } => {
                match command {
                    KeyCommand::Add { name, scope } => {
                        comfyd::cli::keys::add(&settings, &name, &scope).await?
                    }
                    KeyCommand::Generate { name, scope } => {
                        comfyd::cli::keys::generate(&name, &scope)?
                    }
                    KeyCommand::List => comfyd::cli::keys::list(&settings).await?,
                    KeyCommand::Revoke { id_or_name } => {
                        comfyd::cli::keys::revoke(&settings, &id_or_name).await?;
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Release { command } => match command {
                ReleaseCommand::Publish { from, note, dir } => {
                    let dir = dir.unwrap_or_else(|| settings.workflows.dir.clone());
                    comfyd::cli::release::publish(&settings, &dir, from.as_deref(), note).await
                }
                ReleaseCommand::List { limit } => comfyd::cli::release::list(&settings, limit)
                    .await
                    .map(|_| ExitCode::SUCCESS),
                ReleaseCommand::Show { version } => {
                    comfyd::cli::release::show(&settings, version).await
                }
                ReleaseCommand::Check {
                    version,
                    smoke_timeout_secs,
                } => comfyd::cli::release::check(&settings, version, smoke_timeout_secs).await,
            },
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
